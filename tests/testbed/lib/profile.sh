# shellcheck shell=bash
# The laptop side's link (tests/testbed/up --profile): `default` runs ferry right beside
# both hosts, as the testbed always did; `wan` puts it in network namespace
# $LAPTOP_NETNS, where 127.0.0.1:$OLD_PORT and :$NEW_PORT are the two sshd ports behind
# a shaped link (lib/wan_link.py: --wan-mbit each way, --wan-rtt-ms round trip). The
# servers' own network (old <-> new) is never shaped. $PROFILE_FILE says which one is up
# ("default", or "wan RTT_MS MBIT"); tests/testbed/laptop reads it.

LAPTOP_NETNS=ferry-testbed-laptop
PROFILE_FILE=$STATE/profile
WAN_PID=$STATE/wan-link.pid

current_profile() { cut -d' ' -f1 "$PROFILE_FILE" 2>/dev/null || echo default; }

# Stop the link's relay (by its pid, only if it is ours) and remove the namespace.
stop_wan_link() {
  if [[ -f $WAN_PID ]]; then
    local pid
    pid=$(<"$WAN_PID")
    if [[ -d /proc/$pid ]] && grep -qa wan_link.py "/proc/$pid/cmdline"; then
      kill -TERM "$pid"
      for ((i = 0; i < 40; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.25
      done
      [[ ! -d /proc/$pid ]] || kill -KILL "$pid"
    fi
    rm -f "$WAN_PID"
  fi
  if ip netns list 2>/dev/null | grep -qw "$LAPTOP_NETNS"; then
    ip netns del "$LAPTOP_NETNS"
  fi
  rm -f "$PROFILE_FILE"
}

# start_wan_link RTT_MS MBIT: the laptop namespace and its link, replacing any earlier.
start_wan_link() {
  local rtt=$1 mbit=$2
  stop_wan_link
  command -v ip >/dev/null || die "ip (iproute2) is needed for --profile wan"
  ip netns add "$LAPTOP_NETNS"
  ip -n "$LAPTOP_NETNS" link set lo up
  rm -f "$STATE/wan-link.ready"
  setsid python3 "$TESTBED/lib/wan_link.py" --netns "$LAPTOP_NETNS" --rtt-ms "$rtt" --mbit "$mbit" \
    --link "$OLD_PORT" --link "$NEW_PORT" --ready "$STATE/wan-link.ready" \
    </dev/null >"$STATE/wan-link.log" 2>&1 &
  echo $! >"$WAN_PID"
  for ((i = 0; i < 100; i++)); do
    [[ -s $STATE/wan-link.ready ]] && break
    [[ -d /proc/$(<"$WAN_PID") ]] || die "the wan link relay exited: $(tail -3 "$STATE/wan-link.log")"
    sleep 0.1
  done
  [[ -s $STATE/wan-link.ready ]] || die "the wan link relay did not come up in 10s"
  echo "wan $rtt $mbit" >"$PROFILE_FILE"
}
