#!/usr/bin/env bash
# One PUB per OK measured with nsq's own tool (issue 11): --producers to_nsq
# processes, each fed a file of --lines lines of --size bytes, publish to one
# topic. to_nsq calls go-nsq's synchronous Producer.Publish per line: one PUB,
# then a wait for its OK, as applications do. Brokers run A/B/A/B, fresh each
# run, with --mem-queue-size=1000000 (as bench.sh). Per run: messages/s over
# the wall time of the producers, the broker's CPU per PUB (utime+stime from
# /proc), the producers' CPU per PUB (the to_nsq processes' utime+stime), how
# busy the machine's CPUs were over the run (from /proc/stat: 100% means no CPU
# was idle, so the rate is bound by CPU, not by latency), and a check that the
# topic holds every message (no loss).
#
# usage: scripts/to-nsq-ab.sh --to-nsq PATH --broker NAME=PATH [--broker ...]
#            [--producers 4] [--lines 50000] [--size 100] [--runs 3]
#            [--data-dir DIR] [--port 24950]
# The first broker is the baseline of the ratio column.
set -euo pipefail

TO_NSQ="" PRODUCERS=4 LINES=50000 SIZE=100 RUNS=3 DATA_DIR="" PORT=24950
NAMES=() PATHS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --to-nsq) TO_NSQ="$2"; shift 2 ;;
        --broker) NAMES+=("${2%%=*}"); PATHS+=("${2#*=}"); shift 2 ;;
        --producers) PRODUCERS="$2"; shift 2 ;;
        --lines) LINES="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --data-dir) DATA_DIR="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[[ -x "$TO_NSQ" && ${#NAMES[@]} -gt 0 ]] || { sed -n '/^# usage:/,/^# The first/p' "$0" >&2; exit 2; }
for t in curl jq; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 2; }; done

WORK="$(mktemp -d "${DATA_DIR:-${TMPDIR:-/tmp}}/to-nsq-ab.XXXXXX")"
BPID=""
trap '[[ -n "$BPID" ]] && kill -KILL "$BPID" 2>/dev/null; true' EXIT
HTTP=$((PORT + 1))
TICKS=$(getconf CLK_TCK)

# Lines of SIZE bytes (without the newline), numbered so that none repeats.
awk -v n="$LINES" -v s="$SIZE" 'BEGIN { pad = sprintf("%" s "s", ""); gsub(/ /, "x", pad);
    for (i = 0; i < n; i++) { l = sprintf("%d-", i); print l substr(pad, 1, s - length(l)) } }' \
    >"$WORK/lines"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Sets CHILDREN_CPU to the CPU seconds of this shell's waited-for children (the
# producers of a run). `times` must run in this shell: in a command
# substitution it would report the substitution's own subshell.
children_cpu() { times >"$WORK/times"
    CHILDREN_CPU=$(awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, t, "m"); s += t[1] * 60 + t[2] } print s }' "$WORK/times"); }
# busy and total ticks of all CPUs
machine_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }

one_run() { # name path run
    local data="$WORK/data-$1-$3"
    mkdir -p "$data"
    "$2" --tcp-address="127.0.0.1:$PORT" --http-address="127.0.0.1:$HTTP" --data-path="$data" \
        --mem-queue-size=1000000 >"$WORK/$1-$3.log" 2>&1 &
    BPID=$!
    local i
    for i in $(seq 1 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$HTTP/ping" && break
        sleep 0.1
    done
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$HTTP/topic/create?topic=single"
    local c0 t0 t1 c1 p0 p1 m0 m1 pids=()
    c0=$(cpu_ticks "$BPID")
    children_cpu; p0=$CHILDREN_CPU
    m0=$(machine_ticks)
    t0=$(date +%s.%N)
    for i in $(seq 1 "$PRODUCERS"); do
        "$TO_NSQ" --topic=single --nsqd-tcp-address="127.0.0.1:$PORT" <"$WORK/lines" \
            >"$WORK/$1-$3-to_nsq-$i.log" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$BPID")
    m1=$(machine_ticks)
    children_cpu; p1=$CHILDREN_CPU
    local count
    count=$(curl -sf "http://127.0.0.1:$HTTP/stats?format=json&topic=single" |
        jq '[.topics[] | select(.topic_name == "single") | .message_count] | add // 0')
    kill -TERM "$BPID"; wait "$BPID" 2>/dev/null || true; BPID=""
    rm -rf "$data"
    local total=$((PRODUCERS * LINES))
    awk -v b="$1" -v r="$3" -v n="$total" -v got="$count" -v t0="$t0" -v t1="$t1" \
        -v c="$((c1 - c0))" -v hz="$TICKS" -v p0="$p0" -v p1="$p1" \
        -v m0="$m0" -v m1="$m1" 'BEGIN { split(m0, x, " "); split(m1, y, " ")
        printf "%s\t%d\t%.0f\t%.1f\t%.1f\t%.0f%%\t%s\n", b, r, n / (t1 - t0), c / hz * 1e6 / n,
            (p1 - p0) * 1e6 / n, 100 * (y[1] - x[1]) / (y[2] - x[2]),
            (got == n ? "all " n : "LOST: " got " of " n) }'
}

echo "# to-nsq-ab $(date '+%Y-%m-%d %H:%M:%S %Z')  $(nproc) CPUs; $PRODUCERS x to_nsq, $LINES lines of $SIZE B each, runs $RUNS"
for bi in "${!NAMES[@]}"; do
    echo "# broker ${NAMES[$bi]}: ${PATHS[$bi]} ($("${PATHS[$bi]}" --version 2>&1 | head -1))"
done
printf 'broker\trun\tmsgs/s\tbroker CPU us/PUB\tproducers CPU us/PUB\tCPUs busy\tmessages\n'
for run in $(seq 1 "$RUNS"); do
    for bi in "${!NAMES[@]}"; do
        one_run "${NAMES[$bi]}" "${PATHS[$bi]}" "$run"
    done
done | tee "$WORK/runs.tsv"
echo
printf 'broker\tmsgs/s (median)\tratio\tbroker CPU us/PUB (median)\tproducers CPU us/PUB (median)\tCPUs busy (median)\n'
awk -F'\t' -v order="${NAMES[*]}" '
    function median(s,   a, n, i, j, t) { n = split(s, a, " ")
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    { rate[$1] = rate[$1] " " $3; cpu[$1] = cpu[$1] " " $4; pcpu[$1] = pcpu[$1] " " $5
      busy[$1] = busy[$1] " " $6 + 0 }
    END { n = split(order, names, " "); base = median(rate[names[1]])
        for (i = 1; i <= n; i++) { b = names[i]; m = median(rate[b])
            printf "%s\t%.0f\t%.2f\t%.1f\t%.1f\t%.0f%%\n", b, m, m / base, median(cpu[b]),
                median(pcpu[b]), median(busy[b]) } }' "$WORK/runs.tsv"
