#!/usr/bin/env bash
# Compare nsqd-compatible brokers with nsq-load (scripts/loadgen), A/B/A/B.
#
#   scripts/bench.sh --broker ringsqd=target/release/ringsqd --broker nsqd=/path/to/nsqd \
#                    [--runs 3] [--scenario pub-100B --scenario drain-2M ...] [--duration 5s]
#
# For every scenario and run, each broker in turn is started fresh on loopback
# (--tcp-address/--http-address/--data-path=TMP/--mem-queue-size), loaded by nsq-load with
# --server-pid, and stopped. Prints per scenario the median msgs/s of each broker and the
# ratio to the first broker; raw JSON lines (one per run) go to --out. The disk-* and
# durable-* scenarios override --mem-queue-size with 0 (everything through the disk queue).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ALL_SCENARIOS=(pub-100B pub-1KiB pub-single drain-2M pubsub-100B latency-300k http-mpub topics-1000 idle-10k
    disk-pub-100B disk-pub-1KiB disk-drain-100B disk-drain-1KiB)
# selectable with --scenario, not part of the default run (see the usage text)
OPT_IN_SCENARIOS=(durable-pub-100B durable-pub-1KiB)

usage() {
    cat <<EOF
usage: $0 --broker NAME=PATH [--broker NAME=PATH ...] [options]

options:
  --broker NAME=PATH     broker binary (nsqd-compatible flags); the first one is the baseline
  --runs N               runs per scenario and broker, interleaved A/B/A/B (default 3)
  --scenario NAME        scenario to run (repeatable or comma-separated; default: all but
                         the opt-in ones)
  --duration D           load duration of the timed scenarios (default 10s), e.g. 5s
  --backlog N            backlog of drain-2M (default 2000000)
  --disk-backlog N       backlog of disk-drain-100B (default 2000000)
  --disk-backlog-1k N    backlog of disk-drain-1KiB (default 500000)
  --durable-conns N      publisher connections of durable-pub-* (default 64)
  --drop-caches          disk-drain-*: 'sync; echo 3 > /proc/sys/vm/drop_caches' (root, whole
                         machine) between publishing the backlog and the drain, so that the
                         drain reads from the device instead of the page cache
  --idle-conns N         idle connections of idle-10k (default 10000)
  --mem-queue-size N     broker --mem-queue-size (default 1000000; disk-*/durable-*: always 0)
  --data-dir DIR         where the brokers' --data-path directories and logs go (default
                         \$TMPDIR or /tmp); must not be tmpfs for the disk-*/durable-* scenarios
  --broker-arg ARG       extra argument for every broker (repeatable)
  --tls                  every connection over TLS: a CA and a certificate for 127.0.0.1 are
                         made with openssl for this run, the brokers get --tls-cert/--tls-key
                         (and --https-address= so no HTTPS port opens), and nsq-load's
                         publishers and consumers upgrade after IDENTIFY (--tls-ca)
  --port P               first TCP port (HTTP = P+1; default 24650)
  --out FILE             raw JSON lines (default: \$TMPDIR/ringsq-bench-<time>.jsonl)
  --loadgen PATH         nsq-load binary (default: build scripts/loadgen in release mode)
  --progress             show nsq-load's live progress line
  --list                 list the scenarios (the default set, then the opt-in ones) and exit
  --perf DIR             profile each broker's first run of each scenario: perf record -g
                         (999 Hz, 3 s from 1.5 s into the load; drains: from the drain's
                         start) into DIR/<scenario>-<broker>.perf, and the top symbols
                         (perf report --sort sym) into DIR/<scenario>-<broker>.top.txt
  --summarize FILE       print the summary of earlier runs' JSON lines (one or more --out
                         files concatenated) and exit; brokers and scenarios in file order

scenarios:
  pub-100B     MPUB x200, 4 connections, 100 B, topic with one channel (messages queue up)
  pub-1KiB     the same with 1024 B bodies
  pub-single   PUB (one message per command, wait for OK), 4 connections, 100 B
  drain-2M     backlog of 2,000,000 x 100 B on a topic with one channel, then 4 consumers
               (RDY 2500) drain it; msgs/s = backlog / time from RDY to the last message
  pubsub-100B  1 topic, 2 channels x 4 consumers, 4 MPUB publishers, 100 B (exactly-once checked)
  latency-300k open loop at 300,000 msg/s (half of nsqd's peak here), 1 channel x 4
               consumers: compare the e2e p99 column
  http-mpub    HTTP /mpub publishing, 4 keep-alive connections, 200 x 100 B per request
  topics-1000  1000 topics with one channel each, 4 MPUB publishers cycling over them
  idle-10k     10,000 idle connections (IDENTIFY only) plus the pub-100B load; reports the
               broker's RSS per idle connection

disk scenarios: broker started with --mem-queue-size=0, so every message goes through the
disk queue (--data-path on --data-dir; its filesystem is printed in the report header);
"notes" shows the bytes the broker wrote to the storage layer per published message
(/proc/PID/io write_bytes, page cache writes included). Before each broker start: sync.
The four disk-* scenarios are in the default run; with nsqd and ringsqd at 3 runs they add
about 7 minutes to it (nsqd needs ~45 s per disk-drain-100B run here).
  disk-pub-100B     as pub-100B (MPUB x200, 4 connections, 1 channel), default sync policy
  disk-pub-1KiB     the same with 1024 B bodies
  disk-drain-100B   as drain-2M: backlog of --disk-backlog (2,000,000) x 100 B, then 4
                    consumers (RDY 2500) drain it; msgs/s = backlog / drain time
  disk-drain-1KiB   the same with --disk-backlog-1k (500,000) x 1024 B
opt-in (not in the default run: nsqd at --sync-every=1 fsyncs its queue file and rewrites
its metadata file after every message, 200-500 msg/s here, so a run lasts until the first
MPUB of each of the 64 connections is acknowledged, 25-70 s here whatever --duration says,
longer on a disk with slower fsyncs; publishers wait up to 600 s for an acknowledgement):
  durable-pub-100B  --sync-every=1 (ringsqd: OK only after fdatasync, group commit; nsqd:
                    fsync after every message), MPUB x200, --durable-conns (64) connections,
                    100 B, 1 channel; compare msgs/s and the pub RTT p99 column
  durable-pub-1KiB  the same with 1024 B bodies
EOF
}

BROKERS=()
RUNS=3
SCENARIOS=()
DURATION=10s
BACKLOG=2000000
DISK_BACKLOG=2000000
DISK_BACKLOG_1K=500000
DURABLE_CONNS=64
DROP_CACHES=0
DATA_DIR=""
IDLE=10000
MEMQ=1000000
BROKER_ARGS=()
PORT=24650
OUT=""
LOADGEN=""
PROGRESS=0
TLS=0
SUMMARIZE=""
PERF_DIR=""

while [[ $# -gt 0 ]]; do
    # --flag=value means --flag value (so --broker-arg=--sync-every=1 works).
    if [[ "$1" == --*=* ]]; then
        set -- "${1%%=*}" "${1#*=}" "${@:2}"
    fi
    case "$1" in
        --broker) BROKERS+=("$2"); shift 2 ;;
        --broker=*) BROKERS+=("${1#*=}"); shift ;;
        --runs) RUNS="$2"; shift 2 ;;
        --scenario) IFS=, read -r -a s <<<"$2"; SCENARIOS+=("${s[@]}"); shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --backlog) BACKLOG="$2"; shift 2 ;;
        --disk-backlog) DISK_BACKLOG="$2"; shift 2 ;;
        --disk-backlog-1k) DISK_BACKLOG_1K="$2"; shift 2 ;;
        --durable-conns) DURABLE_CONNS="$2"; shift 2 ;;
        --drop-caches) DROP_CACHES=1; shift ;;
        --data-dir) DATA_DIR="$2"; shift 2 ;;
        --idle-conns) IDLE="$2"; shift 2 ;;
        --mem-queue-size) MEMQ="$2"; shift 2 ;;
        --broker-arg) BROKER_ARGS+=("$2"); shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --loadgen) LOADGEN="$2"; shift 2 ;;
        --progress) PROGRESS=1; shift ;;
        --tls) TLS=1; shift ;;
        --summarize) SUMMARIZE="$2"; shift 2 ;;
        --perf) PERF_DIR="$2"; shift 2 ;;
        --list) printf '%s\n' "${ALL_SCENARIOS[@]}" "${OPT_IN_SCENARIOS[@]}"; exit 0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

# Median per scenario and broker, ratio to the first broker, of the JSON lines in $1
# (NAMES and SCENARIOS give the order).
summarize() {
    names_json="$(printf '%s\n' "${NAMES[@]}" | jq -R . | jq -sc .)"
    scen_json="$(printf '%s\n' "${SCENARIOS[@]}" | jq -R . | jq -sc .)"
    jq -rs --argjson names "$names_json" --argjson scens "$scen_json" '
      def median: map(select(. != null)) | sort | if length == 0 then null
          elif length % 2 == 1 then .[(length - 1) / 2] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
      def k: if . == null then "-" elif . < 10000 then (. | round | tostring) else (. / 1000 | floor | tostring) + "k" end;
      def f0: if . == null then "-" else (. | round | tostring) end;
      def us: if . == null then "-" elif . >= 1e6 then ((. / 1e5 | round) / 10 | tostring) + "ms"
          else ((. / 1e3 | round) | tostring) + "us" end;
      . as $all
      | (["scenario", "broker", "ok/runs", "msgs/s (median)", "ratio", "MiB/s", "consumed msgs/s",
          "e2e p99", "pub RTT p99", "broker CPU%", "errors", "notes"] | @tsv),
        ($scens[] as $s
         | ([$all[] | select(.scenario == $s and .broker == $names[0]) | .msgs_per_s] | median) as $base
         | $names[] as $b
         | [$all[] | select(.scenario == $s and .broker == $b)] as $r
         | ($r | map(.msgs_per_s) | median) as $m
         | [ $s, $b,
             "\($r | map(select(.ok == true)) | length)/\($r | length)",
             ($m | k),
             (if $m != null and $base != null and $base > 0 then ($m / $base * 100 | round / 100 | tostring) else "-" end),
             (if ($s | test("drain")) then ($r | map(.consumed.mib_per_s) | median) else ($r | map(.published.mib_per_s) | median) end | f0),
             (if ($r | map(.config.sub_conns // 0) | max // 0) > 0 then ($r | map(if ($s | test("drain")) then .consumed.msgs_per_s else .consumed.msgs_per_s_during_publish end) | median | k) else "-" end),
             ($r | map(.consumed.e2e.p99_ns) | median | us),
             ($r | map(.published.rtt.p99_ns) | median | us),
             ($r | map(.server.cpu_pct) | median | f0),
             ($r | map(.errors.total // 0) | add // 0 | tostring),
             ([ (if ($r | map(select(.failed == true)) | length) > 0
                 then "\($r | map(select(.failed == true)) | length) failed: \($r | map(select(.failed == true) | .error) | first)"
                 else empty end),
                (if $s == "idle-10k" and ($r | map(.idle.rss_bytes_per_conn) | median) != null
                 then "RSS/idle conn " + ($r | map(.idle.rss_bytes_per_conn) | median | f0) + " B" else empty end),
                (if ($s | test("^(disk|durable)-")) then
                   ($r | map(if .server.disk_write_bytes != null and (.published.count // 0) > 0
                             then .server.disk_write_bytes / .published.count else null end) | median) as $w
                   | ($r | map(.server.disk_read_bytes) | median) as $rd
                   | (if $w != null then "disk write \($w | f0) B/msg" else empty end),
                     (if $rd != null and $rd >= 16777216 then "disk read \($rd / 1048576 | f0) MiB" else empty end)
                 else empty end)
              ] | if length == 0 then "-" else join("; ") end)
           ] | @tsv)
    ' "$1" | column -t -s $'\t'
}

if [[ -n "$PERF_DIR" ]]; then
    command -v perf >/dev/null || { echo "--perf needs perf (linux-perf)" >&2; exit 2; }
    mkdir -p "$PERF_DIR"
fi
if [[ -n "$SUMMARIZE" ]]; then
    command -v jq >/dev/null || { echo "bench.sh needs jq (apt-get install jq)" >&2; exit 2; }
    mapfile -t NAMES < <(jq -r .broker "$SUMMARIZE" | awk '!seen[$0]++')
    mapfile -t SCENARIOS < <(jq -r .scenario "$SUMMARIZE" | awk '!seen[$0]++')
    summarize "$SUMMARIZE"
    exit 0
fi

[[ ${#BROKERS[@]} -gt 0 ]] || { usage >&2; exit 2; }
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=("${ALL_SCENARIOS[@]}")
command -v jq >/dev/null || { echo "bench.sh needs jq (apt-get install jq)" >&2; exit 2; }

NAMES=(); PATHS=()
for b in "${BROKERS[@]}"; do
    [[ "$b" == *=* ]] || { echo "--broker wants NAME=PATH, got $b" >&2; exit 2; }
    n="${b%%=*}"; p="${b#*=}"
    [[ -x "$p" ]] || { echo "broker $n: $p is not executable" >&2; exit 2; }
    NAMES+=("$n"); PATHS+=("$(cd "$(dirname "$p")" && pwd)/$(basename "$p")")
done

if [[ -z "$LOADGEN" ]]; then
    echo "building nsq-load ..." >&2
    cargo build --quiet --release --manifest-path "$SCRIPT_DIR/loadgen/Cargo.toml" >&2
    LOADGEN="$SCRIPT_DIR/loadgen/target/release/nsq-load"
fi
[[ -x "$LOADGEN" ]] || { echo "nsq-load not found at $LOADGEN" >&2; exit 2; }

STAMP="$(date +%Y%m%d-%H%M%S)"
[[ -n "$OUT" ]] || OUT="${TMPDIR:-/tmp}/ringsq-bench-$STAMP.jsonl"
[[ -n "$DATA_DIR" ]] || DATA_DIR="${TMPDIR:-/tmp}"
[[ -d "$DATA_DIR" ]] || { echo "--data-dir $DATA_DIR is not a directory" >&2; exit 2; }
WORK="$(mktemp -d "$DATA_DIR/ringsq-bench.XXXXXX")"

is_disk_scenario() { [[ "$1" == disk-* || "$1" == durable-* ]]; }
# Filesystem of the data paths (df -T: stat -f calls ext4 "ext2/ext3").
read -r FS_DEV FS_TYPE FS_AVAIL_KB FS_MOUNT < <(df -P -T -k "$WORK" | awk 'NR == 2 { print $1, $2, $5, $7 }')
NEED_DISK=0
for s in "${SCENARIOS[@]}"; do is_disk_scenario "$s" && NEED_DISK=1; done
if [[ $NEED_DISK == 1 ]]; then
    case "$FS_TYPE" in
        tmpfs|ramfs|devtmpfs)
            echo "the disk scenarios need a real disk, but $WORK is on $FS_TYPE; use --data-dir (e.g. /var/tmp)" >&2
            rmdir "$WORK"; exit 2 ;;
    esac
    if [[ "$FS_AVAIL_KB" -lt $((20 * 1024 * 1024)) ]]; then
        echo "warning: only $((FS_AVAIL_KB / 1024 / 1024)) GiB free on $FS_MOUNT; disk-pub-1KiB can write several GiB per run" >&2
    fi
fi
: >"$OUT"

# --tls: a throwaway CA and server certificate (ECDSA P-256), the same for every broker.
LOAD_TLS=()
if [[ $TLS == 1 ]]; then
    command -v openssl >/dev/null || { echo "--tls needs openssl" >&2; exit 2; }
    T="$WORK/tls"
    mkdir -p "$T"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$T/ca.key" -out "$T/ca.pem" -days 2 -subj /CN=bench-ca 2>/dev/null
    openssl req "${ec[@]}" -keyout "$T/server.key" -out "$T/server.csr" -subj /CN=127.0.0.1 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$T/ext"
    openssl x509 -req -in "$T/server.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial \
        -out "$T/server.pem" -days 2 -extfile "$T/ext" 2>/dev/null
    BROKER_ARGS+=("--tls-cert=$T/server.pem" "--tls-key=$T/server.key" "--https-address=")
    LOAD_TLS=(--tls-ca "$T/ca.pem")
fi

# 10,000 idle connections need file descriptors on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

scenario_args() {
    local common=(--mode mpub --batch 200 --size 100 --pub-conns 4 --channels 1)
    case "$1" in
        pub-100B)    echo "${common[@]} --duration $DURATION" ;;
        pub-1KiB)    echo "--mode mpub --batch 200 --size 1024 --pub-conns 4 --channels 1 --duration $DURATION" ;;
        pub-single)  echo "--mode pub --size 100 --pub-conns 4 --channels 1 --duration $DURATION" ;;
        drain-2M)    echo "${common[@]} --backlog $BACKLOG --sub-conns 4 --rdy 2500" ;;
        pubsub-100B) echo "--mode mpub --batch 200 --size 100 --pub-conns 4 --channels 2 --sub-conns 8 --rdy 2500 --duration $DURATION" ;;
        latency-300k) echo "${common[@]} --rate 300000 --sub-conns 4 --rdy 2500 --duration $DURATION" ;;
        http-mpub)   echo "--mode http-mpub --batch 200 --size 100 --pub-conns 4 --channels 1 --duration $DURATION" ;;
        topics-1000) echo "${common[@]} --topics 1000 --duration $DURATION" ;;
        idle-10k)    echo "${common[@]} --idle-conns $IDLE --duration $DURATION" ;;
        disk-pub-100B) echo "${common[@]} --duration $DURATION" ;;
        disk-pub-1KiB) echo "--mode mpub --batch 200 --size 1024 --pub-conns 4 --channels 1 --duration $DURATION" ;;
        disk-drain-100B) echo "${common[@]} --backlog $DISK_BACKLOG --sub-conns 4 --rdy 2500" ;;
        disk-drain-1KiB) echo "--mode mpub --batch 200 --size 1024 --pub-conns 4 --channels 1 --backlog $DISK_BACKLOG_1K --sub-conns 4 --rdy 2500" ;;
        # nsqd at --sync-every=1 needs 25-70 s here to acknowledge one MPUB per connection
        durable-pub-100B) echo "--mode mpub --batch 200 --size 100 --pub-conns $DURABLE_CONNS --channels 1 --duration $DURATION --ack-timeout 600s" ;;
        durable-pub-1KiB) echo "--mode mpub --batch 200 --size 1024 --pub-conns $DURABLE_CONNS --channels 1 --duration $DURATION --ack-timeout 600s" ;;
        *) return 1 ;;
    esac
}

# Broker flags of a scenario (before --broker-arg ones): sets SB_ARGS.
scenario_broker_args() {
    case "$1" in
        durable-*) SB_ARGS=(--mem-queue-size=0 --sync-every=1) ;;
        disk-*)    SB_ARGS=(--mem-queue-size=0) ;;
        *)         SB_ARGS=(--mem-queue-size="$MEMQ") ;;
    esac
}
for s in "${SCENARIOS[@]}"; do
    scenario_args "$s" >/dev/null || { echo "unknown scenario $s (try --list)" >&2; exit 2; }
done

BPID=""
cleanup() {
    if [[ -n "$BPID" ]] && kill -0 "$BPID" 2>/dev/null; then
        kill -KILL "$BPID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

start_broker() { # path tcp_port http_port data_dir log; flags: SB_ARGS, BROKER_ARGS
    "$1" --tcp-address="127.0.0.1:$2" --http-address="127.0.0.1:$3" --data-path="$4" \
        "${SB_ARGS[@]}" ${BROKER_ARGS[@]+"${BROKER_ARGS[@]}"} >"$5" 2>&1 &
    BPID=$!
    local i
    for i in $(seq 1 200); do # 10 s
        if listening "$2"; then return 0; fi
        kill -0 "$BPID" 2>/dev/null || { echo "broker exited at start, see $5" >&2; BPID=""; return 1; }
        sleep 0.05
    done
    echo "broker did not listen on $2 within 10 s, see $5" >&2
    return 1
}

# perf record of the broker BPID for scenario $1 into $2: for a drain from its start
# (nsq-load's --before-drain, after any page-cache drop), else from 1.5 s into the load.
start_profile() {
    local rec="perf record -F 999 -g -p $BPID -o $2 -- sleep 3 >/dev/null 2>&1"
    if [[ "$1" == *drain* ]]; then
        local before="$rec &"
        [[ ${#scen_pre_drain[@]} -gt 0 ]] && before="${scen_pre_drain[1]}; $before"
        pre_drain=(--before-drain "$before")
    else
        (sleep 1.5; eval "$rec") &
    fi
}

# The top symbols of profile $1, once its perf record (which ends with the broker)
# has written it.
report_profile() {
    local i
    for i in $(seq 1 100); do
        pgrep -f "perf record .* -o $1 " >/dev/null || break
        sleep 0.1
    done
    [[ -s "$1" ]] || { echo "no profile in $1" >&2; return 0; }
    perf report -i "$1" --no-children --sort sym --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -40 >"${1%.perf}.top.txt" || true
}

stop_broker() {
    [[ -n "$BPID" ]] || return 0
    kill -TERM "$BPID" 2>/dev/null || true
    local i
    for i in $(seq 1 300); do # 30 s: nsqd writes its memory queues to disk on exit
        kill -0 "$BPID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$BPID" 2>/dev/null; then
        echo "broker $BPID did not exit within 30 s of SIGTERM; killing" >&2
        kill -KILL "$BPID" 2>/dev/null || true
    fi
    wait "$BPID" 2>/dev/null || true
    BPID=""
}

# ---- report header (also the first lines of the summary)
HEADER="$WORK/header.txt"
{
    echo "# bench.sh $(date '+%Y-%m-%d %H:%M:%S %Z')  $(nproc) CPUs, $(uname -sr); runs $RUNS, duration $DURATION"
    [[ $TLS == 1 ]] && echo "# TLS: every connection (--tls; ECDSA P-256 certificate made for this run)"
    echo "# data path $WORK: $FS_TYPE on $FS_DEV (mounted on $FS_MOUNT), $((FS_AVAIL_KB / 1024 / 1024)) GiB free$(
        [[ $DROP_CACHES == 1 ]] && echo "; page cache dropped before each disk drain")"
    for bi in "${!NAMES[@]}"; do
        v="$(timeout 5 "${PATHS[$bi]}" --version 2>&1 | head -1 || true)"
        echo "# broker ${NAMES[$bi]}: ${PATHS[$bi]} (${v:-version unknown})"
    done
} >"$HEADER"
cat "$HEADER" >&2

port_slot=0
echo "results: $OUT" >&2
for scen in "${SCENARIOS[@]}"; do
    read -r -a sargs <<<"$(scenario_args "$scen")"
    scenario_broker_args "$scen"
    scen_pre_drain=()
    if [[ $DROP_CACHES == 1 && "$scen" == disk-drain-* ]]; then
        scen_pre_drain=(--before-drain "sync; echo 3 > /proc/sys/vm/drop_caches")
    fi
    for run in $(seq 1 "$RUNS"); do
        for bi in "${!NAMES[@]}"; do
            name="${NAMES[$bi]}"; path="${PATHS[$bi]}"
            tcp=$((PORT + 2 * (port_slot % 50))); http=$((tcp + 1)); port_slot=$((port_slot + 1))
            data="$WORK/data-$scen-$name-$run"; log="$WORK/$scen-$name-$run.log"
            mkdir -p "$data"
            # the previous run's writeback must not slow this broker down
            if is_disk_scenario "$scen"; then sync; fi
            echo "=== $scen  run $run/$RUNS  $name (127.0.0.1:$tcp)" >&2
            rec=""
            loadgen_err="broker did not start"
            # The scenario's own hook, plus this run's profile (start_profile).
            pre_drain=(${scen_pre_drain[@]+"${scen_pre_drain[@]}"})
            if start_broker "$path" "$tcp" "$http" "$data" "$log"; then
                perf_file=""
                if [[ -n "$PERF_DIR" && $run == 1 ]]; then
                    perf_file="$PERF_DIR/$scen-$name.perf"
                    start_profile "$scen" "$perf_file"
                fi
                extra=(--quiet)
                [[ $PROGRESS == 1 ]] && extra=()
                set +e
                errf="$WORK/$scen-$name-$run.nsq-load.txt"
                json="$(timeout 1800 "$LOADGEN" "${sargs[@]}" --tcp-address "127.0.0.1:$tcp" \
                    --http-address "127.0.0.1:$http" --server-pid "$BPID" --json --label "$scen" \
                    ${pre_drain[@]+"${pre_drain[@]}"} ${LOAD_TLS[@]+"${LOAD_TLS[@]}"} "${extra[@]}" \
                    2> >(tee "$errf" >&2))"
                rc=$?
                set -e
                sleep 0.1 # let tee finish
                loadgen_err="$(grep '^nsq-load:' "$errf" 2>/dev/null | tail -1 || true)"
                stop_broker
                [[ -n "$perf_file" ]] && report_profile "$perf_file"
                if [[ -n "$json" ]] && jq -e . >/dev/null 2>&1 <<<"$json"; then
                    rec="$(jq -c --arg b "$name" --arg s "$scen" --argjson r "$run" --argjson rc "$rc" \
                        '. + {broker: $b, scenario: $s, run: $r, exit_code: $rc}' <<<"$json")"
                else
                    echo "nsq-load failed (exit $rc); broker log: $log" >&2
                fi
            fi
            stop_broker
            [[ -n "$rec" ]] || rec="$(jq -nc --arg b "$name" --arg s "$scen" --argjson r "$run" \
                --arg e "$loadgen_err" '{broker: $b, scenario: $s, run: $r, failed: true, ok: false, msgs_per_s: null, error: $e}')"
            echo "$rec" >>"$OUT"
            rm -rf "$data"
        done
    done
done

# ---- summary
SUMMARY="${OUT%.jsonl}.summary.txt"
summarize "$OUT" | cat "$HEADER" - | tee "$SUMMARY"
echo >&2
echo "raw results: $OUT" >&2
echo "summary:     $SUMMARY" >&2
echo "broker logs: $WORK" >&2
