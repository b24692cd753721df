"""Writes seed inputs for the store_rpc fuzz target: whole session lifecycles in its
framing, `[rpc byte][length byte][request protobuf]`. Run from this folder."""


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + varint(payload)


def s(num, text):
    return field(num, 2, text.encode())


def call(rpc, body):
    assert len(body) < 256
    return bytes([rpc, len(body)]) + body


APPEND, APPEND_HASHED, FREEZE, PROVE, GET, LIST, MARK, DELETE = range(8)
header = s(1, "pokt1app") + s(2, "llm") + s(3, "sess") + field(4, 0, 1) + field(5, 0, 4)
key = s(1, "pokt1sup") + s(2, "sess")


def relay(n, cu):
    # A Relay with an empty request and response plus an unknown field that makes each
    # relay's bytes (and so its hash) distinct; the hash is filled in by the target.
    relay_bytes = field(1, 2, b"") + field(2, 2, b"") + field(15, 0, n)
    return field(3, 2, field(2, 2, relay_bytes) + field(3, 0, cu))


def append(relays):
    return s(1, "pokt1sup") + field(2, 2, header) + b"".join(relays)


lifecycle = b"".join(
    [
        call(APPEND_HASHED, append([relay(1, 7), relay(2, 9)])),
        call(APPEND_HASHED, append([relay(2, 9), relay(3, 1)])),
        call(GET, key),
        call(LIST, s(1, "pokt1sup")),
        call(FREEZE, key),
        call(APPEND_HASHED, append([relay(4, 1)])),
        call(PROVE, field(1, 2, key) + field(2, 2, bytes(range(32))) + field(3, 0, 1)),
        call(PROVE, field(1, 2, key) + field(2, 2, bytes([0xFF] * 32))),
        call(MARK, field(1, 2, key) + field(2, 0, 4) + s(3, "CAFE")),
        call(MARK, field(1, 2, key) + field(2, 0, 1)),
        call(DELETE, key),
        call(GET, key),
    ]
)
open("lifecycle", "wb").write(lifecycle)
open("bad_hash", "wb").write(call(APPEND, append([field(3, 2, field(1, 2, b"x" * 32) + field(2, 2, b"\x0a\x00"))])))
open("empty_session", "wb").write(call(APPEND_HASHED, append([])) + call(FREEZE, key) + call(PROVE, field(1, 2, key) + field(2, 2, bytes(32))))
