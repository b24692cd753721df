"""Builds and signs the transaction described on stdin with cosmpy (an independent
Cosmos implementation) and compares it with the bytes lode produced.

Input (JSON): private_key_hex, chain_id, account_number, sequence, gas_limit, memo,
timeout_height, fee [[denom, amount]], messages [[type_url, value_hex]], lode_tx_hex.
Output (JSON): cosmpy_tx_hex, equal, lode_signature_verifies, decoded fields.
"""
import json
import sys

from cosmpy.crypto.keypairs import PrivateKey, PublicKey
from cosmpy.protos.cosmos.base.v1beta1.coin_pb2 import Coin
from cosmpy.protos.cosmos.crypto.secp256k1.keys_pb2 import PubKey
from cosmpy.protos.cosmos.tx.signing.v1beta1.signing_pb2 import SignMode
from cosmpy.protos.cosmos.tx.v1beta1.tx_pb2 import AuthInfo, Fee, ModeInfo, SignDoc, SignerInfo, TxBody, TxRaw
from google.protobuf.any_pb2 import Any

spec = json.load(sys.stdin)
key = PrivateKey(bytes.fromhex(spec["private_key_hex"]))
pub = key.public_key

body = TxBody(memo=spec["memo"], timeout_height=spec["timeout_height"])
for type_url, value_hex in spec["messages"]:
    body.messages.append(Any(type_url=type_url, value=bytes.fromhex(value_hex)))
pub_any = Any()
pub_any.Pack(PubKey(key=pub.public_key_bytes), type_url_prefix="/")
auth = AuthInfo(
    signer_infos=[
        SignerInfo(
            public_key=pub_any,
            mode_info=ModeInfo(single=ModeInfo.Single(mode=SignMode.SIGN_MODE_DIRECT)),
            sequence=spec["sequence"],
        )
    ],
    fee=Fee(amount=[Coin(denom=d, amount=a) for d, a in spec["fee"]], gas_limit=spec["gas_limit"]),
)
body_bytes, auth_bytes = body.SerializeToString(), auth.SerializeToString()
sign_doc = SignDoc(body_bytes=body_bytes, auth_info_bytes=auth_bytes, chain_id=spec["chain_id"], account_number=spec["account_number"])
signature = key.sign(sign_doc.SerializeToString(), deterministic=True, canonicalise=True)
cosmpy_tx = TxRaw(body_bytes=body_bytes, auth_info_bytes=auth_bytes, signatures=[signature]).SerializeToString()

# Decode lode's bytes with cosmpy's classes and check its signature independently.
lode = TxRaw()
lode.ParseFromString(bytes.fromhex(spec["lode_tx_hex"]))
lode_doc = SignDoc(body_bytes=lode.body_bytes, auth_info_bytes=lode.auth_info_bytes, chain_id=spec["chain_id"], account_number=spec["account_number"])
lode_body = TxBody()
lode_body.ParseFromString(lode.body_bytes)
verifies = len(lode.signatures) == 1 and PublicKey(pub.public_key_bytes).verify(lode_doc.SerializeToString(), lode.signatures[0])

json.dump(
    {
        "cosmpy_tx_hex": cosmpy_tx.hex(),
        "equal": cosmpy_tx.hex() == spec["lode_tx_hex"],
        "lode_signature_verifies": bool(verifies),
        "decoded_memo": lode_body.memo,
        "decoded_timeout_height": lode_body.timeout_height,
        "decoded_type_urls": [m.type_url for m in lode_body.messages],
    },
    sys.stdout,
)
