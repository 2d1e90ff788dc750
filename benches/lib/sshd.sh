# shellcheck shell=bash
# shellcheck disable=SC2034 # BENCH_SSHD_* are this file's output to the caller
# A real OpenSSH sshd on a free 127.0.0.1 port with its own config, host key and
# authorized_keys in a directory (the same approach as tests/common/sshd.rs).
#
#   bench_keygen DIR/id_ed25519                 # client key pair
#   bench_sshd_start DIR CLIENT_PUB             # sets BENCH_SSHD_PORT, BENCH_SSHD_PID
#   bench_sshd_stop DIR                         # kills the sshd started there (by its pid)

bench_keygen() {
	local key=$1
	[ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -C "$(basename "$key")" -f "$key"
}

bench_free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# True once something on 127.0.0.1:$1 answers with an SSH banner.
bench_wait_banner() {
	local port=$1 pid=$2 _
	for _ in $(seq 1 200); do
		kill -0 "$pid" 2>/dev/null || return 1
		if python3 - "$port" <<'EOF' 2>/dev/null; then return 0; fi
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.settimeout(2)
sys.exit(0 if s.recv(8).startswith(b"SSH-2.0") else 1)
EOF
		sleep 0.05
	done
	return 1
}

bench_sshd_start() {
	local dir=$1 client_pub=$2 attempt port pid
	mkdir -p "$dir" /run/sshd
	chmod 755 "$dir"
	[ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C host -f "$dir/host_ed25519"
	cp "$client_pub" "$dir/authorized_keys"
	chmod 644 "$dir/authorized_keys"
	for attempt in 1 2 3 4 5; do
		port=$(bench_free_port)
		cat >"$dir/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding yes
MaxSessions 64
MaxStartups 64
LogLevel ERROR
PrintMotd no
Subsystem sftp internal-sftp
EOF
		/usr/sbin/sshd -D -e -f "$dir/sshd_config" </dev/null >"$dir/sshd.log" 2>&1 &
		pid=$!
		if bench_wait_banner "$port" "$pid"; then
			echo "$pid" >"$dir/bench-sshd.pid"
			BENCH_SSHD_PORT=$port
			BENCH_SSHD_PID=$pid
			return 0
		fi
		kill "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		: "$attempt"
	done
	echo "sshd did not start; its log:" >&2
	cat "$dir/sshd.log" >&2
	return 1
}

# The known_hosts line for the sshd in DIR listening on PORT.
bench_known_hosts_line() {
	local dir=$1 port=$2 kind key
	read -r kind key _ <"$dir/host_ed25519.pub"
	echo "[127.0.0.1]:$port $kind $key"
}

# Stop the sshd started in DIR, and the per-connection processes it forked (its
# children), by pid only.
bench_sshd_stop() {
	local dir=$1 pid child
	[ -f "$dir/bench-sshd.pid" ] || return 0
	pid=$(cat "$dir/bench-sshd.pid")
	for child in $(pgrep -P "$pid" 2>/dev/null); do
		kill "$child" 2>/dev/null || true
	done
	kill "$pid" 2>/dev/null || true
	rm -f "$dir/bench-sshd.pid"
}
