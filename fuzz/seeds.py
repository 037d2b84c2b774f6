#!/usr/bin/env python3
"""Writes the hand-made seed inputs into fuzz/corpus/<target>/ (run once; the fuzzer adds to them).

Seeds are small valid inputs of each format, so the fuzzer starts past the first checks."""
import hashlib
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    # Named by content, as libFuzzer names what it adds.
    with open(os.path.join(d, "seed-" + hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def h(s):
    return bytes.fromhex("".join(s.split()))


# --- config: the shipped examples and a few small files of each kind.
for name in ("example.yaml", "lab.yaml"):
    with open(os.path.join(ROOT, "config", name), "rb") as f:
        put("config", f.read())
put("config", """vips:
  - name: web
    address: 192.0.2.10
    port: 80
    protocol: tcp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.11, mac: "02:00:00:00:00:0b", weight: 1 }
""")
put("config", """node:
  tunnel_source_v4: 10.0.200.0/24
  tunnel_source_v6: fd00:200::/112
vips:
  - name: v6
    address: "2001:db8::10"
    port: 443
    protocol: tcp
    mode: dsr-ipip
    hash: source-ip
    maglev_table_size: 251
    health_check: { type: tcp, interval: 1s, timeout: 500ms, rise: 2, fall: 3 }
    backends:
      - { address: "2001:db8::11", weight: 3 }
      - address: "2001:db8::12"
""")
put("config", """bgp:
  local_as: 65001
  router_id: 10.0.0.2
  hold_time: 9s
  communities: ["65001:100"]
  peers:
    - { address: 10.0.0.1, remote_as: 65000, password: secret, bfd: { enabled: true, min_tx: 100ms, min_rx: 100ms, multiplier: 3 } }
nat_pools:
  - { name: p4, addresses: [10.0.0.201], ports: 20000-39999 }
vips:
  - name: nat
    address: 192.0.2.20
    port: 53
    protocol: udp
    mode: nat
    snat_pool: p4
    backends: &b
      - { address: 10.0.0.11, port: 5353 }
  - { name: again, address: 192.0.2.21, port: 53, protocol: udp, mode: nat, snat_pool: p4, backends: *b }
""")
put("config", """vips:
  - name: app
    address: 192.0.2.30
    port: 80
    protocol: tcp
    mode: l7
    l7:
      proxy_protocol: true
      routes:
        - host: example.com
          path_prefix: /api
          backends: [{ address: 10.0.0.11, port: 8000 }]
    backends: []
""")

# --- BGP: messages as BIRD and the speaker send them.
MARKER = "ff" * 16
BIRD_OPEN = h("ffffffffffffffffffffffffffffffff00390104fde800090a0000011c021a0104000100010200400600780001010041040000fde846004700")
KEEPALIVE = h(MARKER + "0013 04")
UPDATE_V4 = h(MARKER + """0043 02 0000 0022 40 01 01 00 40 02 06 02 01 0000fdf2 40 03 04 0a000002 80 04 04 00000014
              c0 08 04 fdf20064 20 c000020a 20 c000020b""")
UPDATE_V6 = h(MARKER + """005c 02 0000 0045 40 01 01 00 40 02 06 02 01 0000fdf2 80 04 04 00000014 c0 08 04 fdf20064
              90 0e 0026 0002 01 10 fd000000000000000000000000000002 00 80 20010db8000000000000000000000010""")
WITHDRAW_V6 = h(MARKER + "002f 02 0000 0018 90 0f 0014 0002 01 80 20010db8000000000000000000000010")
WITHDRAW_V4 = h(MARKER + "001c 02 0005 20 c000020a 0000")
EOR_V4 = h(MARKER + "0017 02 0000 0000")
NOTIFICATION = h(MARKER + "0018 03 06 02 010203")
ROUTE_REFRESH_V4 = h(MARKER + "0017 05 0001 00 01")
ROUTE_REFRESH_V6 = h(MARKER + "0017 05 0002 00 01")
SPEAKER_OPEN = h(MARKER + """003f 01 04 5ba0 0009 c0000215 22
                  02 20 0104 0001 00 01 0104 0002 00 01 0200 4104 fa56ea01 400a 8078 0001 01 80 0002 01 80""")
for m in (BIRD_OPEN, SPEAKER_OPEN, KEEPALIVE, UPDATE_V4, UPDATE_V6, WITHDRAW_V4, WITHDRAW_V6, EOR_V4,
          NOTIFICATION, ROUTE_REFRESH_V4):
    put("bgp_message", m)
put("bgp_message", BIRD_OPEN + KEEPALIVE + UPDATE_V4 + ROUTE_REFRESH_V4)


def open_msg(asn, hold, router_id, families=((1, 1), (2, 1)), asn4=True, gr=True):
    """An OPEN with multiprotocol, route refresh, 4-octet AS and graceful restart capabilities."""
    caps = b""
    for afi, safi in families:
        caps += bytes([1, 4]) + struct.pack("!HBB", afi, 0, safi)
    caps += bytes([2, 0])
    if asn4:
        caps += bytes([65, 4]) + struct.pack("!I", asn)
    if gr:
        caps += bytes([64, 6]) + struct.pack("!H", 120) + struct.pack("!HBB", 1, 1, 0x80)
    params = bytes([2, len(caps)]) + caps
    my_as = asn if asn < 65536 else 23456
    body = struct.pack("!BHH", 4, my_as, hold) + bytes(router_id) + bytes([len(params)]) + params
    return h(MARKER) + struct.pack("!HB", 19 + len(body), 1) + body


# --- bgp_session: a settings byte (bit 0: IPv6 session, bit 1: iBGP, bit 2: MED, bit 3: draining,
# bit 4: hold time 0, bit 5: restarted) and what the peer sends (it is AS 65001, or 65010 for iBGP).
EBGP = open_msg(65001, 9, (10, 0, 0, 1))
IBGP = open_msg(65010, 9, (10, 0, 0, 1))
put("bgp_session", b"\x00" + EBGP + KEEPALIVE + UPDATE_V4 + EOR_V4 + KEEPALIVE + ROUTE_REFRESH_V4 + WITHDRAW_V4)
put("bgp_session", b"\x01" + EBGP + KEEPALIVE + UPDATE_V6 + ROUTE_REFRESH_V6 + WITHDRAW_V6 + NOTIFICATION)
put("bgp_session", b"\x02" + IBGP + KEEPALIVE + KEEPALIVE)
put("bgp_session", b"\x3c" + open_msg(65001, 3, (10, 0, 0, 1), families=((1, 1),), asn4=False, gr=False) + KEEPALIVE)
put("bgp_session", b"\x00" + BIRD_OPEN + KEEPALIVE)
put("bgp_session", b"\x00" + EBGP + UPDATE_V4)

# --- bfd: 3 settings bytes (min TX, min RX, multiplier), then records of a time step (2 bytes,
# ms), a jitter byte and a 24-byte control packet.
def bfd(state, my, your, tx=1_000_000, rx=100_000, poll=False, fin=False, mult=3, diag=0):
    flags = (state << 6) | (0x20 if poll else 0) | (0x10 if fin else 0)
    return bytes([0x20 | diag, flags, mult, 24]) + struct.pack("!IIIII", my, your, tx, rx, 0)


DOWN, INIT, UP, ADMIN = 1, 2, 3, 0
LOCAL = 0x12345678
BIRD_DOWN = h("2040031867951b4c00000000000f4240000186a000000000")
put("bfd", BIRD_DOWN)
put("bfd", bytes([0, 0, 3]) + b"\x00\x0a\x80" + bfd(DOWN, 7, 0) + b"\x00\x0a\x80" + bfd(UP, 7, LOCAL)
    + b"\x00\x64\x40" + bfd(UP, 7, LOCAL, tx=100_000, poll=True) + b"\x03\xe8\x10" + bfd(UP, 7, LOCAL, fin=True)
    + b"\x02\x00\x00" + bfd(DOWN, 7, LOCAL, diag=1))
put("bfd", bytes([1, 1, 1]) + b"\x00\x01\x00" + bfd(INIT, 9, LOCAL) + b"\x00\x01\xad" + bfd(ADMIN, 9, LOCAL)
    + b"\x10\x00\xff" + bfd(UP, 9, 0xdead, rx=0))

# --- proxy_protocol: v2 headers as haproxy and the L4 tier send them, then the client's bytes.
SIG = b"\r\n\r\n\x00\r\nQUIT\n"
v4 = SIG + b"\x21\x11\x00\x0c" + bytes([198, 51, 100, 7, 192, 0, 2, 10]) + struct.pack("!HH", 40000, 80)
v6 = SIG + b"\x21\x21\x00\x24" + h("20010db8000000000000000000000007 20010db8000000000000000000000010") \
    + struct.pack("!HH", 1234, 443)
put("proxy_protocol", v4 + b"GET / HTTP/1.1\r\n")
put("proxy_protocol", v6)
put("proxy_protocol", SIG + b"\x20\x00\x00\x00")
put("proxy_protocol", SIG + b"\x21\x31\x00\x04\x01\x02\x03\x04")
put("proxy_protocol", SIG + b"\x21\x12\x00\x11" + bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1, 2)
    + b"\x04\x00\x02hi")

# --- admin: a read-buffer size byte, then request lines as the CLI writes them (and replies).
lines = [
    "stats",
    "status",
    {"drain": {"vip": "web", "backend": "10.0.0.11", "undo": False}},
    {"drain_node": {"undo": True}},
    {"plan": {"path": "/etc/xlb/xlb.yaml", "config": "vips: []\n"}},
    {"done": "drained"},
    {"error": "no such VIP"},
]
text = "".join(json.dumps(l, separators=(",", ":")) + "\n" for l in lines)
put("admin", b"\x07" + text.encode())
put("admin", b"\xff" + json.dumps(lines[4], separators=(",", ":")).encode() + b"\n" + b"{\"stats\"\n")
put("admin", b"\x00" + b'"status"')
