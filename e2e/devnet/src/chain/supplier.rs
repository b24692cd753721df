//! The supplier module: staking (new suppliers, stake and service updates, revenue
//! shares) and unstaking.

use super::*;

impl Chain {
    pub(super) fn stake_supplier(
        &self,
        m: &mut Modules,
        h: i64,
        msg: MsgStakeSupplier,
        events: &mut Vec<Event>,
    ) -> Result<(), TxError> {
        const INVALID_STAKE: u32 = 1103;
        const INVALID_SERVICE: u32 = 1104;
        const UNAUTHORIZED: u32 = 1106;
        if msg.owner_address.is_empty() || msg.operator_address.is_empty() {
            return Err(supplier_err(
                1101,
                "invalid address",
                "owner and operator addresses are required",
            ));
        }
        if msg.signer != msg.owner_address && msg.signer != msg.operator_address {
            return Err(supplier_err(
                UNAUTHORIZED,
                "unauthorized supplier signer",
                format!(
                    "signer {} is neither the owner nor the operator",
                    msg.signer
                ),
            ));
        }
        let stake = msg.stake.as_ref().ok_or_else(|| {
            supplier_err(INVALID_STAKE, "invalid supplier stake", "stake is required")
        })?;
        if stake.denom != DENOM {
            return Err(supplier_err(
                INVALID_STAKE,
                "invalid supplier stake",
                format!("denom {} is not {DENOM}", stake.denom),
            ));
        }
        let amount: u128 = stake.amount.parse().map_err(|_| {
            supplier_err(
                INVALID_STAKE,
                "invalid supplier stake",
                format!("amount {:?} is not an integer", stake.amount),
            )
        })?;
        if amount < self.genesis.supplier_min_stake {
            return Err(supplier_err(
                INVALID_STAKE,
                "invalid supplier stake",
                format!(
                    "stake {amount}{DENOM} is below the minimum {}{DENOM}",
                    self.genesis.supplier_min_stake
                ),
            ));
        }
        if msg.services.is_empty() {
            return Err(supplier_err(
                INVALID_SERVICE,
                "invalid service config",
                "at least one service is required",
            ));
        }
        for s in &msg.services {
            if !self.services.contains_key(&s.service_id) {
                return Err(supplier_err(
                    INVALID_SERVICE,
                    "invalid service config",
                    format!("service {:?} not found", s.service_id),
                ));
            }
            if s.endpoints.is_empty() || s.endpoints.iter().any(|e| e.url.is_empty()) {
                return Err(supplier_err(
                    INVALID_SERVICE,
                    "invalid service config",
                    format!("service {:?} needs an endpoint URL", s.service_id),
                ));
            }
        }
        // Changes take effect at the next session start: a session's suppliers never
        // change while it runs.
        let activation = self.shared().session_end_height(h) + 1;
        let existing = m.suppliers.get(&msg.operator_address).cloned();
        let previous_stake = existing.as_ref().map_or(0, |s| s.stake);
        if let Some(s) = &existing
            && s.owner != msg.owner_address
        {
            return Err(supplier_err(
                UNAUTHORIZED,
                "unauthorized supplier signer",
                "the owner of a staked supplier cannot be changed",
            ));
        }
        if amount < previous_stake {
            return Err(supplier_err(
                INVALID_STAKE,
                "invalid supplier stake",
                format!("stake {amount}{DENOM} is below the current stake {previous_stake}{DENOM}"),
            ));
        }
        let owner = m.accounts.get_mut(&msg.owner_address).ok_or_else(|| {
            sdk(
                5,
                format!(
                    "owner {} has no funds: insufficient funds",
                    msg.owner_address
                ),
            )
        })?;
        let due = amount - previous_stake;
        if owner.balance < due {
            return Err(sdk(
                5,
                format!(
                    "{}{DENOM} is smaller than {due}{DENOM}: insufficient funds",
                    owner.balance
                ),
            ));
        }
        owner.balance -= due;
        let mut supplier = existing.unwrap_or(SupplierState {
            owner: msg.owner_address.clone(),
            operator: msg.operator_address.clone(),
            stake: 0,
            services: Vec::new(),
            history: Vec::new(),
            unstake_session_end_height: 0,
        });
        for u in supplier
            .history
            .iter_mut()
            .filter(|u| u.deactivation_height == 0)
        {
            u.deactivation_height = activation;
        }
        supplier
            .history
            .retain(|u| u.deactivation_height == 0 || u.deactivation_height > u.activation_height);
        for s in &msg.services {
            supplier.history.push(ServiceConfigUpdate {
                service: s.clone(),
                activation_height: activation,
                deactivation_height: 0,
            });
        }
        supplier.stake = amount;
        supplier.services = msg.services.clone();
        supplier.unstake_session_end_height = 0;
        m.suppliers.insert(msg.operator_address.clone(), supplier);
        if !m.accounts.contains_key(&msg.operator_address) {
            let number = m.next_account_number;
            m.next_account_number += 1;
            m.accounts.insert(
                msg.operator_address.clone(),
                Account {
                    number,
                    ..Default::default()
                },
            );
        }
        events.push(Event {
            kind: "pocket.supplier.EventSupplierStaked".into(),
            attributes: vec![
                ("operator_address".into(), msg.operator_address),
                ("stake".into(), format!("{amount}{DENOM}")),
                ("session_end_height".into(), (activation - 1).to_string()),
            ],
        });
        Ok(())
    }
    pub(super) fn unstake_supplier(
        &self,
        m: &mut Modules,
        h: i64,
        msg: MsgUnstakeSupplier,
        events: &mut Vec<Event>,
    ) -> Result<(), TxError> {
        let s = m.suppliers.get_mut(&msg.operator_address).ok_or_else(|| {
            supplier_err(
                1105,
                "supplier not found",
                format!("operator {}", msg.operator_address),
            )
        })?;
        if msg.signer != s.owner && msg.signer != s.operator {
            return Err(supplier_err(
                1106,
                "unauthorized supplier signer",
                format!(
                    "signer {} is neither the owner nor the operator",
                    msg.signer
                ),
            ));
        }
        if s.unstake_session_end_height != 0 {
            return Err(supplier_err(
                1108,
                "supplier is in unbonding period",
                format!("operator {}", msg.operator_address),
            ));
        }
        let end = self.shared().session_end_height(h);
        s.unstake_session_end_height = end as u64;
        for u in s.history.iter_mut().filter(|u| u.deactivation_height == 0) {
            u.deactivation_height = end + 1;
        }
        events.push(Event {
            kind: "pocket.supplier.EventSupplierUnbondingBegin".into(),
            attributes: vec![
                ("operator_address".into(), msg.operator_address),
                ("session_end_height".into(), end.to_string()),
            ],
        });
        Ok(())
    }
}
