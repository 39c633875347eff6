#!/usr/bin/env bash
# Integration test on a real Slurm: labels images with a 3-task array job submitted from
# deploy/slurm/label-array.sbatch, merges them with a dependent job (as the recipe says), and
# asserts that the merged CSV is byte-identical to a single-process run of the same job.
#
# Needs root (it installs Debian's slurmctld, slurmd, slurm-client and munge with apt when they
# are missing, and starts munged as user munge). Everything else lives in a scratch directory:
# a single-node cluster on 127.0.0.1 with its own munge key and socket, config, state and logs.
# Every daemon it starts is stopped on exit, whatever happens. Exits non-zero on any failure.
#
#   sudo scripts/slurm_integration.sh            # runs cargo build --release first
#   CLIPLABEL_BIN=/path/to/cliplabel KEEP_SCRATCH=1 scripts/slurm_integration.sh
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
BIN=${CLIPLABEL_BIN:-$REPO/target/release/cliplabel}
MODEL=$REPO/tests/fixtures/tiny-clip
START=$SECONDS

log() { echo "[slurm-it $((SECONDS - START))s] $*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (installs packages and starts munged/slurmd/slurmctld)"

# --- packages -------------------------------------------------------------------------------
PKGS=(slurmctld slurmd slurm-client munge)
missing=0
for cmd in slurmctld slurmd sbatch squeue sinfo scontrol scancel munged mungekey munge unmunge; do
    command -v "$cmd" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 1 ]; then
    log "installing ${PKGS[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The packages must not start system-wide daemons (this script starts its own): without a
    # policy-rc.d, install one that forbids it for the duration of the install.
    POLICY=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY" && chmod 0755 "$POLICY" && own_policy=1
    fi
    ok=1
    if ! apt-get install -y --no-install-recommends "${PKGS[@]}" >/tmp/slurm-it-apt.log 2>&1; then
        apt-get update >>/tmp/slurm-it-apt.log 2>&1 || true
        apt-get install -y --no-install-recommends "${PKGS[@]}" >>/tmp/slurm-it-apt.log 2>&1 || ok=
    fi
    [ -z "$own_policy" ] || rm -f "$POLICY"
    [ -n "$ok" ] || { tail -20 /tmp/slurm-it-apt.log >&2; die "apt-get install ${PKGS[*]} failed"; }
fi
id munge >/dev/null 2>&1 || die "the munge package did not create the munge user"

if [ -z "${CLIPLABEL_BIN:-}" ]; then
    log "cargo build --release (a no-op when up to date)"
    cargo build --release --quiet --bin cliplabel || die "cargo build --release failed"
fi
[ -x "$BIN" ] || die "no cliplabel binary at $BIN"

# --- scratch directory and cleanup ------------------------------------------------------------
SCRATCH=$(mktemp -d /tmp/cliplabel-slurm.XXXXXX)
chmod 0755 "$SCRATCH" # munged runs as munge and must reach its socket directory
DAEMON_PIDS=()        # in start order; stopped in reverse

stop_pid() { # pid name
    local pid=$1 name=$2 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name ($pid)"; return 0; }
        sleep 0.1
    done
    log "$name ($pid) ignored SIGTERM for 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? i p
    set +e
    cd / # so that neither this shell nor its subshells count as working in the scratch directory
    if [ -n "${SLURM_CONF:-}" ] && [ -f "${SLURM_CONF}" ] && [ "${#DAEMON_PIDS[@]}" -gt 1 ]; then
        # Cancel whatever is left of our jobs so that slurmd's job steps end before slurmd.
        timeout 10 scancel --full --user=root >/dev/null 2>&1
        for i in $(seq 1 50); do
            [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    for ((i = ${#DAEMON_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${DAEMON_PIDS[i]%%:*}" "${DAEMON_PIDS[i]#*:}"
    done
    # Job steps (slurmstepd) and job processes detach from slurmd: stop any process still
    # working in the scratch directory, which only this run's processes can be.
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = $$ ] && continue
        local hit='' l
        for l in "/proc/$p/cwd" "/proc/$p"/fd/*; do
            case $(readlink "$l" 2>/dev/null) in "$SCRATCH"/* | "$SCRATCH") hit=1 && break ;; esac
        done
        if [ -n "$hit" ]; then
            log "stopping leftover process $p ($(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-80))"
            stop_pid "$p" "leftover $p"
        fi
    done
    if [ "$rc" != 0 ]; then
        for f in "$SCRATCH"/log/* "$SCRATCH"/job/*; do
            [ -f "$f" ] || continue
            echo "----- $f (last 30 lines)" >&2
            tail -30 "$f" >&2
        done
    fi
    if [ -n "${KEEP_SCRATCH:-}" ]; then
        log "scratch kept in $SCRATCH"
    else
        rm -rf "$SCRATCH"
    fi
    if [ "$rc" = 0 ]; then log "PASS"; else log "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # seconds description command...
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${limit}s waiting for $what"
        sleep 0.5
    done
}

mkdir -p "$SCRATCH"/{munge,log,state,spool,job,data}
# The jobs run a snapshot of the binary, which a concurrent build cannot replace.
cp "$BIN" "$SCRATCH/cliplabel"
BIN=$SCRATCH/cliplabel
chown munge:munge "$SCRATCH/munge"
chmod 0755 "$SCRATCH/munge" # 0700 fails: clients (root, the jobs) must reach the socket

# --- munge ------------------------------------------------------------------------------------
SOCK=$SCRATCH/munge/munge.socket
mungekey --create --keyfile="$SCRATCH/munge/munge.key" --force >/dev/null
chown munge:munge "$SCRATCH/munge/munge.key"
chmod 0600 "$SCRATCH/munge/munge.key"
setpriv --reuid=munge --regid=munge --clear-groups \
    munged --foreground --socket="$SOCK" --key-file="$SCRATCH/munge/munge.key" \
    --pid-file="$SCRATCH/munge/munged.pid" --seed-file="$SCRATCH/munge/munged.seed" \
    --log-file="$SCRATCH/munge/munged.log" >"$SCRATCH/log/munged.out" 2>&1 &
DAEMON_PIDS+=("$!:munged")
munge_ok() { munge -n -S "$SOCK" 2>/dev/null | unmunge -S "$SOCK" >/dev/null 2>&1; }
wait_for 20 "munged to answer on $SOCK" munge_ok
log "munged is up"

# --- slurm configuration ----------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
CTLD_PORT=$((20000 + $$ % 20000))
while ! port_free "$CTLD_PORT" || ! port_free $((CTLD_PORT + 1)); do CTLD_PORT=$((CTLD_PORT + 2)); done
SLURMD_PORT=$((CTLD_PORT + 1))
NODE=$(hostname -s 2>/dev/null || uname -n)
NODE=${NODE%%.*}
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)

export SLURM_CONF=$SCRATCH/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=cliplabel-it
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCK
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=kill_invalid_depend
ReturnToService=2
MailProg=/bin/true
MinJobAge=600
StateSaveLocation=$SCRATCH/state
SlurmdSpoolDir=$SCRATCH/spool
SlurmctldPidFile=$SCRATCH/slurmctld.pid
SlurmdPidFile=$SCRATCH/slurmd.pid
SlurmctldLogFile=$SCRATCH/log/slurmctld.log
SlurmdLogFile=$SCRATCH/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=it Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -D -c -f "$SLURM_CONF" >"$SCRATCH/log/slurmctld.out" 2>&1 &
DAEMON_PIDS+=("$!:slurmctld")
ctld_ok() { kill -0 "${DAEMON_PIDS[1]%%:*}" 2>/dev/null || die "slurmctld exited"; scontrol ping 2>/dev/null | grep -q UP; }
wait_for 30 "slurmctld to answer" ctld_ok
slurmd -D -N "$NODE" -f "$SLURM_CONF" >"$SCRATCH/log/slurmd.out" 2>&1 &
DAEMON_PIDS+=("$!:slurmd")
node_idle() {
    kill -0 "${DAEMON_PIDS[2]%%:*}" 2>/dev/null || die "slurmd exited"
    [ "$(sinfo -h -n "$NODE" -o %t 2>/dev/null)" = idle ]
}
wait_for 60 "node $NODE to be idle" node_idle
log "single-node cluster up: node $NODE, $CPUS CPUs, slurmctld port $CTLD_PORT"

# --- data -------------------------------------------------------------------------------------
IMGS=$SCRATCH/data/images
mkdir -p "$IMGS/sub"
for copy in 000 001 002; do
    for f in "$REPO"/tests/fixtures/images/*; do
        n=$(basename "$f")
        case $n in big_* | *1000*) continue ;; esac
        cp "$f" "$IMGS/${copy}_$n"
    done
done
cp "$REPO/tests/fixtures/bad/not_an_image.png" "$IMGS/sub/broken.png" # one failure to merge
N_IMAGES=$(find "$IMGS" -type f | wc -l)
printf 'cat\ndog: puppy | hound\ncar\n' >"$SCRATCH/data/classes.txt"
OUT=$SCRATCH/data/labels/labels.csv
# --batch-size 1: each image is computed alone, exactly as in the single-process run (with
# larger batches, float rounding depends on which images share a batch).
EXTRA="--batch-size 1 --top-k 2" # word-split on purpose below
export CLIPLABEL_CACHE=$SCRATCH/cache HF_HUB_OFFLINE=1

# --- the array job and the dependent merge, as deploy/slurm/label-array.sbatch says -----------
cd "$SCRATCH/job"
ARRAY=$(sbatch --parsable --array=0-2 --cpus-per-task=1 --mem=500M --time=00:10:00 \
    --output="$SCRATCH/job/label-%A_%a.out" \
    --export="ALL,CLIPLABEL=$BIN,MODEL=$MODEL,CLASSES=$SCRATCH/data/classes.txt,IMAGES=$IMGS,OUT=$OUT,SHARDS=3,EXTRA_ARGS=$EXTRA" \
    "$REPO/deploy/slurm/label-array.sbatch")
ARRAY=${ARRAY%%;*}
MERGE=$(sbatch --parsable --dependency="afterok:$ARRAY" --job-name=cliplabel-merge \
    --cpus-per-task=1 --mem=200M --output="$SCRATCH/job/merge-%j.out" \
    --wrap "'$BIN' merge '$OUT' --inputs '$IMGS'")
MERGE=${MERGE%%;*}
log "submitted array job $ARRAY (3 tasks, $N_IMAGES images) and merge job $MERGE"

# Meanwhile, the single-process run of the same job.
# shellcheck disable=SC2086
"$BIN" label --model "$MODEL" --classes "$SCRATCH/data/classes.txt" $EXTRA --threads 1 \
    --quiet --out "$SCRATCH/data/single.csv" "$IMGS" || die "the single-process run failed"

job_gone() { [ -z "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]; }
states() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | sort | uniq -c | tr -s ' \n' ' '; }
wait_for 120 "array job $ARRAY to finish" job_gone "$ARRAY"
log "array job $ARRAY:$(states "$ARRAY")"
n_done=$(scontrol show job -o "$ARRAY" | grep -c 'JobState=COMPLETED' || true)
[ "$n_done" = 3 ] || die "expected 3 completed array tasks, got $n_done"
wait_for 60 "merge job $MERGE to finish" job_gone "$MERGE"
log "merge job $MERGE:$(states "$MERGE")"
scontrol show job -o "$MERGE" | grep -q 'JobState=COMPLETED' || die "the merge job did not complete"
for i in 0 1 2; do
    grep -q "shard $i/3: " "$SCRATCH"/job/label-"${ARRAY}"_*.out ||
        die "no task reported shard $i/3"
done
cat "$SCRATCH"/job/merge-*.out >&2

# --- the checks -------------------------------------------------------------------------------
[ -f "$OUT" ] || die "no merged $OUT"
cmp "$OUT" "$SCRATCH/data/single.csv" || die "merged CSV differs from the single-process run"
cmp "$OUT.failed.jsonl" "$SCRATCH/data/single.csv.failed.jsonl" ||
    die "merged failure list differs from the single-process run"
cmp "$OUT.run.json" "$SCRATCH/data/single.csv.run.json" || die "merged run.json differs"
rows=$(($(wc -l <"$OUT") - 1))
[ "$rows" = $((N_IMAGES - 1)) ] || die "expected $((N_IMAGES - 1)) rows, got $rows"
log "merged CSV of $rows rows (+1 failure) is byte-identical to the single-process run"

# A retried task resumes: drop shard 1's last rows, rerun task 1 alone, merge again.
S1=$SCRATCH/data/labels/labels.shard-1-of-3.csv
head -n -2 "$S1" >"$S1.tmp" && mv "$S1.tmp" "$S1"
"$BIN" merge --force --quiet "$OUT" 2>"$SCRATCH/data/merge-err.txt" &&
    die "merge accepted a shard with missing rows"
grep -q "shard 1 of 3" "$SCRATCH/data/merge-err.txt" || die "merge error does not name shard 1"
RETRY=$(sbatch --parsable --array=1 --cpus-per-task=1 --mem=500M --time=00:10:00 \
    --output="$SCRATCH/job/retry-%A_%a.out" \
    --export="ALL,CLIPLABEL=$BIN,MODEL=$MODEL,CLASSES=$SCRATCH/data/classes.txt,IMAGES=$IMGS,OUT=$OUT,SHARDS=3,EXTRA_ARGS=$EXTRA" \
    "$REPO/deploy/slurm/label-array.sbatch")
RETRY=${RETRY%%;*}
wait_for 120 "retry job $RETRY to finish" job_gone "$RETRY"
scontrol show job -o "$RETRY" | grep -q 'JobState=COMPLETED' || die "the retried task failed"
grep -q "labelled 2," "$SCRATCH"/job/retry-*.out || die "the retried task did not resume (expected 2 new rows)"
"$BIN" merge --force --quiet "$OUT" --inputs "$IMGS"
cmp "$OUT" "$SCRATCH/data/single.csv" || die "merged CSV after the retry differs"
log "a retried task resumed (2 rows) and the merge is again byte-identical"
