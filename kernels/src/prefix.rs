//! Prefix keys: what the relay tier routes on.
//!
//! An engine keeps the KV cache of the prompts it served, so a request whose prompt
//! starts like an earlier one is cheaper on the engine that served the earlier one. A
//! request's keys name prefixes of its prompt:
//!
//! - **the prompt** is the request's own JSON text, from the first message's `{` to the
//!   last message's `}` (chat), or the prompt's text (completions): a client serializes
//!   the same message the same way each time, and nothing is parsed into values;
//! - **a key** is BLAKE3 (keyed by a seed over the model and the tools, which shape the
//!   rendered prompt's start) of the prompt's first `e` bytes, for `e` at every
//!   `block_bytes` and at the message boundaries where other requests' prompts end: the
//!   first message (a shared system prompt), this conversation's previous turn (two and
//!   three messages back), and the whole prompt. Two requests share the key at `e`
//!   exactly when their prompts agree up to `e`.
//!
//! The keys are BLAKE3's own tree over the prompt (1 KiB chunks, hashed once, the
//! prefixes put together from the subtrees they share), so keying costs about one
//! BLAKE3 pass over the prompt, with SIMD over its chunks: `cargo bench -p lode-kernels
//! --bench relay -- prefix`.
//!
//! Keys are routing hints that never leave the supplier's pods. Anything the skimmer
//! cannot read, and a body over the budget, has no keys ([`Unkeyed`]): such a request is
//! routed by load alone and still served.

use std::collections::HashMap;

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use memchr::memchr2;

/// The key of the seed's keyed hash (a constant: it only separates lode's keys from
/// other uses of BLAKE3).
const SEED_KEY: &[u8; 32] = b"lode prefix keys, 2026-12, v1...";

/// BLAKE3's chunk: the leaves of its tree.
const CHUNK_LEN: usize = 1024;

/// Default distance between keys inside a long message, bytes.
pub const DEFAULT_BLOCK_BYTES: usize = 4096;
/// Default largest body that is keyed, bytes.
pub const DEFAULT_MAX_BYTES: usize = 512 << 10;
/// Most keys at block boundaries a request has (a bound on its keys whatever the budget).
pub const MAX_BLOCKS: usize = 1024;

/// How requests are cut and how much of them is keyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyBudget {
    /// Distance between keys inside a long message, bytes (at least 64).
    pub block_bytes: usize,
    /// Largest body that is keyed; a larger one is [`Unkeyed::TooLarge`].
    pub max_bytes: usize,
}

impl Default for KeyBudget {
    fn default() -> Self {
        Self {
            block_bytes: DEFAULT_BLOCK_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Why a request has no keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unkeyed {
    #[error("the body is larger than the keying budget")]
    TooLarge,
    #[error("the body is not a JSON object")]
    NotJson,
    #[error("the body has no messages or prompt")]
    NoPrompt,
}

impl Unkeyed {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::NotJson => "not_json",
            Self::NoPrompt => "no_prompt",
        }
    }
}

/// A request's prefix keys, shortest prefix first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixKeys {
    /// Key `i` names the prompt's first `ends[i]` bytes (BLAKE3's first 8 bytes: a
    /// collision costs one cache miss, nothing else).
    pub keys: Vec<u64>,
    /// The prefix lengths, increasing: how much a match on key `i` is worth.
    pub ends: Vec<u32>,
}

impl PrefixKeys {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Prompt bytes covered by the first `n` keys.
    pub fn bytes(&self, n: usize) -> u32 {
        if n == 0 { 0 } else { self.ends[n - 1] }
    }
}

/// The prefix keys of an OpenAI chat or completions request body.
pub fn prefix_keys(body: &[u8], budget: KeyBudget) -> Result<PrefixKeys, Unkeyed> {
    if body.len() > budget.max_bytes {
        return Err(Unkeyed::TooLarge);
    }
    let parts = Skim::new(body).top_level()?;
    let seed = seed_of(body, &parts);
    // The prompt: one stretch of the body, from the first message's `{` to the last
    // message's `}` (the commas between them included), or a completion's text.
    let (first, last) = (parts.prompt[0], parts.prompt[parts.prompt.len() - 1]);
    let (r0, r1) = (first.0, last.1);
    let block = budget.block_bytes.max(64);
    let mut at: Vec<usize> = (1..=MAX_BLOCKS)
        .map(|i| i * block)
        .take_while(|&e| e < r1 - r0)
        .collect();
    // Where other requests' prompts end: a shared first message (a system prompt) and
    // this conversation's previous turn (its prompt ended two or three messages ago).
    let n = parts.prompt.len();
    if n > 1 {
        at.push(first.1 - r0);
        for back in [2, 3] {
            if n > back {
                at.push(parts.prompt[n - 1 - back].1 - r0);
            }
        }
    }
    at.push(r1 - r0);
    at.sort_unstable();
    at.dedup();
    let mut tree = Tree {
        seed: &seed,
        r: &body[r0..r1],
        memo: HashMap::new(),
    };
    let mut out = PrefixKeys::default();
    for e in at.into_iter().filter(|&e| e > 0) {
        let root = tree.root(e);
        out.keys
            .push(u64::from_le_bytes(root[..8].try_into().expect("8 bytes")));
        out.ends.push(e as u32);
    }
    if out.is_empty() {
        // An empty prompt.
        return Err(Unkeyed::NoPrompt);
    }
    Ok(out)
}

/// The key of a conversation's opening: its prompt through the first user message
/// (chat), or through its first block (completions). Every turn of a conversation has
/// the same one, different conversations of one group (one system prompt) do not: the
/// gateway keeps a conversation on one supplier with it. `None` for what
/// [`prefix_keys`] cannot key, and for a chat without a user message.
pub fn conversation_key(body: &[u8], budget: KeyBudget) -> Option<u64> {
    if body.len() > budget.max_bytes {
        return None;
    }
    let parts = Skim::new(body).top_level().ok()?;
    let seed = seed_of(body, &parts);
    let r0 = parts.prompt[0].0;
    let end = if parts.chat {
        parts
            .prompt
            .iter()
            .find(|&&(a, b)| role_of(&body[a..b]) == Some(&b"user"[..]))?
            .1
    } else {
        parts.prompt[0].1.min(r0 + budget.block_bytes.max(64))
    };
    let root = blake3::keyed_hash(&seed, &body[r0..end]);
    Some(u64::from_le_bytes(
        root.as_bytes()[..8].try_into().expect("8 bytes"),
    ))
}

/// The chain's seed: the model and the tools, which shape the rendered prompt's start.
fn seed_of(body: &[u8], parts: &Parts) -> [u8; 32] {
    let mut seed = blake3::Hasher::new_keyed(SEED_KEY);
    for (tag, span) in [(b"model", parts.model), (b"tools", parts.tools)] {
        if let Some((a, b)) = span {
            seed.update(tag);
            seed.update(&((b - a) as u64).to_le_bytes());
            seed.update(&body[a..b]);
        }
    }
    *seed.finalize().as_bytes()
}

/// A message's `role` (the JSON string's raw bytes), if it is an object with one.
fn role_of(message: &[u8]) -> Option<&[u8]> {
    let mut k = Skim::new(message);
    k.eat(b'{').ok()?;
    loop {
        let (a, b) = k.string().ok()?;
        k.eat(b':').ok()?;
        if &message[a..b] == b"role" && k.peek() == Some(b'"') {
            let (a, b) = k.string().ok()?;
            return Some(&message[a..b]);
        }
        k.value().ok()?;
        if k.peek() != Some(b',') {
            return None;
        }
        k.i += 1;
    }
}

/// BLAKE3's own tree over the prompt, keyed by the seed: the key of a prefix is
/// BLAKE3 of that prefix, put together from the CVs of the aligned subtrees it is made
/// of. Each subtree is hashed once for all the prefixes that share it, and a whole
/// power-of-two subtree in one call, which BLAKE3 spreads over its SIMD lanes.
struct Tree<'a> {
    seed: &'a [u8; 32],
    r: &'a [u8],
    /// Subtrees hashed so far, by (offset, length): at most a few per key, and found
    /// in constant time however many keys a large prompt has.
    memo: HashMap<(usize, usize), ChainingValue>,
}

impl Tree<'_> {
    fn mode(&self) -> Mode<'_> {
        Mode::KeyedHash(self.seed)
    }

    /// The chaining value of the subtree `a .. a + len` (`a` at a chunk boundary).
    fn cv(&mut self, a: usize, len: usize) -> ChainingValue {
        if let Some(&cv) = self.memo.get(&(a, len)) {
            return cv;
        }
        let whole = len <= CHUNK_LEN
            || (len.is_multiple_of(CHUNK_LEN) && (len / CHUNK_LEN).is_power_of_two());
        let cv = if whole {
            let half = len / 2;
            let memo = |x: usize| self.memo.get(&(x, half)).copied();
            match (len > CHUNK_LEN).then(|| (memo(a), memo(a + half))) {
                Some((Some(l), Some(r))) => merge_subtrees_non_root(&l, &r, self.mode()),
                _ => blake3::Hasher::new_keyed(self.seed)
                    .set_input_offset(a as u64)
                    .update(&self.r[a..a + len])
                    .finalize_non_root(),
            }
        } else {
            let l = left_subtree_len(len as u64) as usize;
            let (x, y) = (self.cv(a, l), self.cv(a + l, len - l));
            merge_subtrees_non_root(&x, &y, self.mode())
        };
        self.memo.insert((a, len), cv);
        cv
    }

    /// BLAKE3 (keyed by the seed) of the first `e` bytes.
    fn root(&mut self, e: usize) -> [u8; 32] {
        if e <= CHUNK_LEN {
            return *blake3::keyed_hash(self.seed, &self.r[..e]).as_bytes();
        }
        let l = left_subtree_len(e as u64) as usize;
        let (x, y) = (self.cv(0, l), self.cv(l, e - l));
        *merge_subtrees_root(&x, &y, self.mode()).as_bytes()
    }
}

/// Where a body's keyed parts are.
#[derive(Debug, Default)]
struct Parts {
    model: Option<(usize, usize)>,
    tools: Option<(usize, usize)>,
    /// The messages, one span each, or the one prompt.
    prompt: Vec<(usize, usize)>,
    /// Whether the prompt is a chat's messages.
    chat: bool,
}

/// A JSON skimmer: finds values' extents without building them. Strings are skipped
/// with `memchr`, so the cost is close to a scan of the body's quotes.
struct Skim<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Skim<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, i: 0 }
    }

    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Result<(), Unkeyed> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Unkeyed::NotJson)
        }
    }

    /// Skips a string starting at its opening quote; returns the span of its content.
    fn string(&mut self) -> Result<(usize, usize), Unkeyed> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            let at = memchr2(b'"', b'\\', &self.b[self.i..]).ok_or(Unkeyed::NotJson)?;
            self.i += at;
            if self.b[self.i] == b'\\' {
                self.i += 2; // the escaped character (a `\u` escape's digits are plain)
                if self.i > self.b.len() {
                    return Err(Unkeyed::NotJson);
                }
            } else {
                self.i += 1;
                return Ok((start, self.i - 1));
            }
        }
    }

    /// Skips any value; returns its span.
    fn value(&mut self) -> Result<(usize, usize), Unkeyed> {
        let start = match self.peek() {
            None => return Err(Unkeyed::NotJson),
            Some(_) => self.i,
        };
        match self.b[start] {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                // Nesting is counted, not recursed into: any depth costs nothing.
                let mut depth = 0usize;
                loop {
                    match self.peek().ok_or(Unkeyed::NotJson)? {
                        b'"' => {
                            self.string()?;
                        }
                        b'{' | b'[' => {
                            depth += 1;
                            self.i += 1;
                        }
                        b'}' | b']' => {
                            depth -= 1;
                            self.i += 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => self.i += 1,
                    }
                }
            }
            _ => {
                while let Some(c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    return Err(Unkeyed::NotJson);
                }
            }
        }
        Ok((start, self.i))
    }

    /// The elements of an array, one span each.
    fn elements(&mut self) -> Result<Vec<(usize, usize)>, Unkeyed> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            out.push(self.value()?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => return Err(Unkeyed::NotJson),
            }
        }
    }

    fn top_level(mut self) -> Result<Parts, Unkeyed> {
        let mut parts = Parts::default();
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            return Err(Unkeyed::NoPrompt);
        }
        loop {
            let (a, b) = self.string()?;
            self.eat(b':')?;
            match &self.b[a..b] {
                b"messages" if self.peek() == Some(b'[') => {
                    parts.prompt = self.elements()?;
                    parts.chat = true;
                }
                b"prompt" => {
                    let (a, b) = self.value()?;
                    // A string prompt is keyed on its text; any other (a list of
                    // prompts, token ids) on its JSON.
                    let quoted = self.b[a] == b'"';
                    parts.prompt = vec![if quoted { (a + 1, b - 1) } else { (a, b) }];
                    parts.chat = false;
                }
                b"model" => parts.model = Some(self.value()?),
                b"tools" => parts.tools = Some(self.value()?),
                _ => {
                    self.value()?;
                }
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => break,
                _ => return Err(Unkeyed::NotJson),
            }
        }
        if parts.prompt.is_empty() {
            return Err(Unkeyed::NoPrompt);
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(body: &str) -> PrefixKeys {
        prefix_keys(body.as_bytes(), KeyBudget::default()).expect("keyed")
    }

    fn chat(model: &str, msgs: &[(&str, &str)]) -> String {
        let m: Vec<String> = msgs
            .iter()
            .map(|(r, c)| format!(r#"{{"role":"{r}","content":"{c}"}}"#))
            .collect();
        format!(
            r#"{{"model":"{model}","messages":[{}],"stream":true}}"#,
            m.join(",")
        )
    }

    #[test]
    fn a_conversation_shares_its_earlier_turns() {
        let system = "You are a careful assistant. ".repeat(300); // 8.7 KB: 3 blocks
        let t1 = keys(&chat("m", &[("system", &system), ("user", "hello")]));
        let t2 = keys(&chat(
            "m",
            &[
                ("system", &system),
                ("user", "hello"),
                ("assistant", "hi there"),
                ("user", "and then?"),
            ],
        ));
        assert_eq!(t1.len(), 4);
        assert_eq!(t2.len(), 5);
        assert_eq!(t1.keys[..], t2.keys[..4], "turn 2 starts with turn 1");
        assert_eq!(t1.ends[..], t2.ends[..4]);
        // Another user with the same system prompt shares its three blocks.
        let other = keys(&chat("m", &[("system", &system), ("user", "bonjour")]));
        assert_eq!(other.keys[..3], t1.keys[..3]);
        assert_ne!(other.keys[3], t1.keys[3]);
        // A different model shares nothing.
        let m2 = keys(&chat("m2", &[("system", &system), ("user", "hello")]));
        assert!(m2.keys.iter().all(|k| !t1.keys.contains(k)));
        // The fields after the messages do not matter; a changed word does.
        let plain = chat("m", &[("system", &system), ("user", "hello")]);
        let no_stream = plain.replace(r#","stream":true"#, r#","stream":false,"max_tokens":9"#);
        assert_eq!(keys(&no_stream), t1);
        let changed = plain.replacen("careful", "careless", 1);
        assert!(keys(&changed).keys.iter().all(|k| !t1.keys.contains(k)));
        assert_eq!(t1.bytes(0), 0);
        assert_eq!(t1.bytes(4) as usize, t1.ends[3] as usize);
    }

    #[test]
    fn completions_key_their_text_and_tools_change_the_seed() {
        let text = "x".repeat(10_000);
        let a = keys(&format!(r#"{{"model":"m","prompt":"{text}"}}"#));
        assert_eq!(a.len(), 3);
        assert_eq!(a.ends, vec![4096, 8192, 10_000]);
        let longer = keys(&format!(r#"{{"prompt":"{text}yyyy","model":"m"}}"#));
        assert_eq!(a.keys[..2], longer.keys[..2]);
        let tools = r#"[{"type":"function","function":{"name":"f"}}]"#;
        let base = chat("m", &[("user", "hi")]);
        let with_tools = base.replacen('{', &format!(r#"{{"tools":{tools},"#), 1);
        assert_ne!(keys(&base).keys[0], keys(&with_tools).keys[0]);
        // Content parts and escapes are plain JSON to the skimmer.
        let parts = r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a \"q\" \\ b"}]}],"model":"m"}"#;
        assert_eq!(keys(parts).len(), 1);
    }

    #[test]
    fn hostile_bodies_have_no_keys() {
        let b = KeyBudget::default();
        for (body, why) in [
            (&b"not json"[..], Unkeyed::NotJson),
            (b"", Unkeyed::NotJson),
            (b"[1,2]", Unkeyed::NotJson),
            (b"{}", Unkeyed::NoPrompt),
            (br#"{"model":"m"}"#, Unkeyed::NoPrompt),
            (br#"{"messages":[]}"#, Unkeyed::NoPrompt),
            (br#"{"messages":"text"}"#, Unkeyed::NoPrompt),
            (br#"{"prompt":""}"#, Unkeyed::NoPrompt),
            (
                br#"{"messages":[{"role":"user","content":"unterminated}]}"#,
                Unkeyed::NotJson,
            ),
            (br#"{"messages":[{"a":1}"#, Unkeyed::NotJson),
            (br#"{"prompt":"x\"#, Unkeyed::NotJson),
            (br#"{"prompt":}"#, Unkeyed::NotJson),
            (br#"{"prompt":"x" "y"}"#, Unkeyed::NotJson),
        ] {
            assert_eq!(
                prefix_keys(body, b),
                Err(why),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Over the budget: refused before a byte is read.
        let big = format!(r#"{{"prompt":"{}"}}"#, "z".repeat(b.max_bytes));
        assert_eq!(prefix_keys(big.as_bytes(), b), Err(Unkeyed::TooLarge));
        // Deep nesting costs no stack.
        let deep = format!(
            r#"{{"x":{}1{},"prompt":"p"}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(prefix_keys(deep.as_bytes(), b).map(|k| k.len()), Ok(1));
        // Many tiny messages, or small blocks: the keys are bounded.
        let many = format!(r#"{{"messages":[{}]}}"#, vec!["1"; 5000].join(","));
        assert_eq!(prefix_keys(many.as_bytes(), b).map(|k| k.len()), Ok(6));
        let small = KeyBudget {
            block_bytes: 1,
            max_bytes: 1 << 20,
        };
        let long = format!(r#"{{"prompt":"{}"}}"#, "w".repeat(200_000));
        let k = prefix_keys(long.as_bytes(), small).expect("keyed");
        assert_eq!(k.len(), MAX_BLOCKS + 1);
        assert_eq!(k.ends[0], 64);
        assert_eq!(k.bytes(k.len()), 200_000);
    }

    #[test]
    fn a_conversation_keeps_its_opening_key() {
        let b = KeyBudget::default();
        let key = |body: &str| conversation_key(body.as_bytes(), b);
        let system = "Be brief. ".repeat(50);
        let t1 = chat("m", &[("system", &system), ("user", "plan a trip")]);
        let t2 = chat(
            "m",
            &[
                ("system", &system),
                ("user", "plan a trip"),
                ("assistant", "where to?"),
                ("user", "Lisbon"),
            ],
        );
        assert!(key(&t1).is_some());
        assert_eq!(key(&t1), key(&t2), "every turn");
        let other = chat("m", &[("system", &system), ("user", "write a poem")]);
        assert_ne!(key(&t1), key(&other), "another conversation of the group");
        // Without a system prompt; the opening is the first user message.
        let plain = chat("m", &[("user", "plan a trip")]);
        let plain2 = chat(
            "m",
            &[("user", "plan a trip"), ("assistant", "ok"), ("user", "go")],
        );
        assert_eq!(key(&plain), key(&plain2));
        assert_ne!(key(&plain), key(&t1));
        // The role may come after the content; no user message, no key.
        let late = r#"{"model":"m","messages":[{"content":"plan a trip","role":"user"}]}"#;
        assert!(key(late).is_some());
        assert_eq!(key(&chat("m", &[("system", "only")])), None);
        assert_eq!(key("not json"), None);
        // Completions: the first block.
        let text = "y".repeat(9000);
        let c1 = key(&format!(r#"{{"model":"m","prompt":"{text}"}}"#));
        let c2 = key(&format!(r#"{{"model":"m","prompt":"{text}zzz"}}"#));
        assert!(c1.is_some());
        assert_eq!(c1, c2);
    }

    #[test]
    fn keys_are_blake3_of_the_prefix_however_put_together() {
        let seed = [9u8; 32];
        let r: Vec<u8> = (0..40_000u32).map(|i| (i * 31 % 253) as u8).collect();
        // One tree answering many prefixes (its subtrees shared), against BLAKE3 of each.
        let mut tree = Tree {
            seed: &seed,
            r: &r,
            memo: HashMap::new(),
        };
        let lens = [
            1, 63, 1023, 1024, 1025, 2048, 3000, 4096, 4097, 8192, 8193, 12_288, 15_580, 16_384,
            24_577, 32_768, 39_999, 40_000,
        ];
        for &e in &lens {
            assert_eq!(
                tree.root(e),
                *blake3::keyed_hash(&seed, &r[..e]).as_bytes(),
                "prefix of {e} bytes"
            );
        }
        // And backwards, with a fresh tree.
        let mut tree = Tree {
            seed: &seed,
            r: &r,
            memo: HashMap::new(),
        };
        for &e in lens.iter().rev() {
            assert_eq!(tree.root(e), *blake3::keyed_hash(&seed, &r[..e]).as_bytes());
        }
    }
}
