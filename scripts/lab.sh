#!/usr/bin/env bash
# The lab: a client namespace and an LB namespace joined by a veth pair. xlb runs in the LB
# namespace with config/lab.yaml, XDP attached to its veth; real HTTP and UDP echo servers listen
# on the VIPs there (until forwarding lands, the data plane counts VIP traffic and passes it to
# the local stack). The client sends HTTP requests, UDP datagrams and pings over IPv4 and IPv6;
# the lab prints what got through and the agent's counters, then tears everything down.
#
#   ./scripts/lab.sh            run, print, tear down
#   ./scripts/lab.sh --keep     leave the topology running and print how to poke at it
#   LAB_REQUESTS=200 ./scripts/lab.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

keep=0
[ "${1:-}" = "--keep" ] && keep=1
requests=${LAB_REQUESTS:-50}
[ "$(id -u)" = 0 ] || { echo "lab.sh needs root (namespaces, XDP)" >&2; exit 1; }

./scripts/setup.sh
cargo build --locked -q -p lb-userspace
xlb="$root/target/debug/xlb"
py=/usr/bin/python3   # Debian's python, whatever pyenv puts on PATH

tag=$$
cl=xlb-lab-cl-$tag
lb=xlb-lab-lb-$tag
work=$(mktemp -d /tmp/xlb-lab.XXXXXX)
sock=$work/admin.sock
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$cl" 2>/dev/null || true
  ip netns del "$lb" 2>/dev/null || true
  rm -rf "$work"
}
if [ $keep = 0 ]; then trap cleanup EXIT; else trap 'echo "lab.sh failed; tearing down" >&2; cleanup' ERR; fi
trap 'exit 130' INT TERM

vip4=10.203.0.100
vip6=fd00:203::100

echo "== topology: $cl (10.203.0.1, fd00:203::1) --veth-- $lb (10.203.0.2, fd00:203::2; VIPs $vip4 $vip6)"
ip netns add "$cl"
ip netns add "$lb"
ip -n "$cl" link set lo up
ip -n "$lb" link set lo up
ip -n "$cl" link add eth0 type veth peer name eth0 netns "$lb"
ip -n "$cl" link set eth0 up
ip -n "$lb" link set eth0 up
ip -n "$cl" addr add 10.203.0.1/24 dev eth0
ip -n "$lb" addr add 10.203.0.2/24 dev eth0
ip -n "$lb" addr add $vip4/32 dev eth0
ip -n "$cl" route add $vip4/32 via 10.203.0.2
ip -n "$cl" addr add fd00:203::1/64 dev eth0 nodad
ip -n "$lb" addr add fd00:203::2/64 dev eth0 nodad
ip -n "$lb" addr add $vip6/128 dev eth0 nodad
ip -n "$cl" -6 route add $vip6/128 via fd00:203::2

echo "== xlb check config/lab.yaml"
"$xlb" check config/lab.yaml

echo "== servers on the VIPs (HTTP :8080, UDP echo :5353)"
mkdir -p "$work/www"
echo "hello from the xlb lab" > "$work/www/index.html"
cat > "$work/udp_echo.py" <<'PY'
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
PY
cat > "$work/udp_client.py" <<'PY'
import socket, sys
addr, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
ok = 0
for i in range(count):
    msg = f"datagram {i}".encode()
    s.sendto(msg, (addr, port))
    try:
        if s.recv(2048) == msg:
            ok += 1
    except socket.timeout:
        pass
print(ok)
PY
for vip in $vip4 $vip6; do
  ip netns exec "$lb" $py -m http.server 8080 --bind $vip --directory "$work/www" >/dev/null 2>&1 &
  pids+=($!)
  ip netns exec "$lb" $py "$work/udp_echo.py" $vip 5353 &
  pids+=($!)
done

echo "== xlb run --iface eth0 (in $lb)"
ip netns exec "$lb" "$xlb" run --config config/lab.yaml --iface eth0 --admin-socket "$sock" 2>"$work/xlb.log" &
agent=$!
pids+=($agent)
for _ in $(seq 1 100); do "$xlb" stats --admin-socket "$sock" >/dev/null 2>&1 && break; sleep 0.1; done
"$xlb" stats --admin-socket "$sock" >/dev/null || { cat "$work/xlb.log" >&2; exit 1; }
ip -n "$lb" link show eth0 | grep -o 'xdp[a-z]*' | head -n1 | sed 's/^/   attached: /'

for url in "http://$vip4:8080/" "http://[$vip6]:8080/"; do
  for _ in $(seq 1 50); do ip netns exec "$cl" curl -s -o /dev/null --max-time 1 "$url" && break; sleep 0.1; done
done

echo "== traffic: $requests HTTP requests and $requests UDP datagrams per family, 3 pings to $vip4"
http4=0; http6=0
for _ in $(seq 1 "$requests"); do
  ip netns exec "$cl" curl -s -o /dev/null --max-time 2 "http://$vip4:8080/" && http4=$((http4 + 1))
  ip netns exec "$cl" curl -s -o /dev/null --max-time 2 "http://[$vip6]:8080/" && http6=$((http6 + 1))
done
udp4=$(ip netns exec "$cl" $py "$work/udp_client.py" $vip4 5353 "$requests")
udp6=$(ip netns exec "$cl" $py "$work/udp_client.py" $vip6 5353 "$requests")
pings=$(ip netns exec "$cl" ping -c 3 -i 0.2 -W 1 $vip4 | sed -n 's/.* \([0-9]*\) received.*/\1/p')

printf '\n%-8s %-24s %10s\n' "VIP" "what" "succeeded"
printf '%-8s %-24s %10s\n' web4 "HTTP GET" "$http4/$requests"
printf '%-8s %-24s %10s\n' web6 "HTTP GET" "$http6/$requests"
printf '%-8s %-24s %10s\n' echo4 "UDP echo" "$udp4/$requests"
printf '%-8s %-24s %10s\n' echo6 "UDP echo" "$udp6/$requests"
printf '%-8s %-24s %10s\n' ping4 "ICMP echo" "${pings:-0}/3"

echo
echo "== xlb stats (counted by the XDP program on $lb's eth0)"
"$xlb" stats --admin-socket "$sock"

failed=0
[ "$http4" = "$requests" ] && [ "$http6" = "$requests" ] && [ "$udp4" = "$requests" ] && [ "$udp6" = "$requests" ] || failed=1

if [ $keep = 1 ]; then
  cat <<EOT

The lab is still running. Try:
  ip netns exec $cl curl http://$vip4:8080/
  ip netns exec $cl curl 'http://[$vip6]:8080/'
  $xlb stats --admin-socket $sock
  ip -n $lb link show eth0            # shows the attached XDP program
  kill -HUP $agent                     # reload config/lab.yaml
Tear it down with:
  kill ${pids[*]}; ip netns del $cl; ip netns del $lb; rm -rf $work
EOT
fi

if [ $failed = 1 ]; then
  echo "lab: some requests failed; agent log:" >&2
  cat "$work/xlb.log" >&2
  exit 1
fi
echo "lab: all requests succeeded"
