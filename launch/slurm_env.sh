# Shared by the sbatch scripts (launch/pretrain_howto100m.sh, launch/finetune.sh); sourced, not run.
#
#   vlp_master_env        MASTER_ADDR = first host of the job, MASTER_PORT = 20000 + job id % 20000
#   vlp_runtime_env REPO  PYTHON ($VLP_PYTHON, REPO/.venv, python3), CPU fallback, threads, PYTHONPATH
#   vlp_config PATH REPO  the config as given, else relative to REPO
#   vlp_run_dir CONFIG .. run.output_dir after the overrides (for the log)
#   vlp_header            job id, restart count, nodes, master, log file
#   vlp_run ENTRY ARGS    srun ENTRY on every task; preemption-aware (see below)
#   vlp_lost_rank         after a failed srun: the log line saying a rank or node was lost, if any
#   vlp_requeue_lost      requeue after a lost rank/node, at most VLP_MAX_REQUEUES times (see below)
#
# Preemption: Slurm sends SIGUSR1 to this batch shell only (`--signal=B:USR1@300`). The trap
# forwards it with `kill -USR1 <srun pid>`; srun relays it to every task of the step (checked
# on Slurm 22.05: each python process gets exactly one SIGUSR1). The trainer finishes its
# step, checkpoints and exits 3 (PREEMPTED_EXIT in pretrain/loop.py); the script then
# requeues the job (`scontrol requeue`, the same job id, SLURM_RESTART_COUNT + 1) and the next
# run resumes from the run directory's latest complete checkpoint. SIGTERM (scancel, the time
# limit) is forwarded the same way and never requeues.
#
# A lost rank or node (srun reports a task Killed or a node failure, or a rank's CollectiveError
# names the rank it lost) also requeues, while SLURM_RESTART_COUNT < VLP_MAX_REQUEUES (default 3):
# the next run resumes from the latest complete checkpoint. A config error (exit 2, also from a
# rank) or any other failure (a bug, bad data) never requeues: it would fail the same way again.
# shellcheck shell=bash

PREEMPTED_EXIT=3  # keep equal to pretrain/loop.py

vlp_die() { echo "launch: $*" >&2; exit 2; }

vlp_master_env() {
  [[ -n ${SLURM_JOB_ID:-} && -n ${SLURM_JOB_NODELIST:-} ]] || vlp_die "not inside a Slurm job (submit with sbatch)"
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
  # --distribution=arbitrary with SLURM_HOSTFILE: task 0 (rank 0, the rendezvous server) runs on its first host
  if [[ ${SLURM_DISTRIBUTION:-} == arbitrary* && -r ${SLURM_HOSTFILE:-} ]]; then
    MASTER_ADDR=$(grep -m1 -v '^[[:space:]]*$' "$SLURM_HOSTFILE" | tr -d '[:space:]')
  fi
  MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))  # from the job, never inherited from the submit shell
  export MASTER_ADDR MASTER_PORT
}

vlp_runtime_env() {
  local repo=$1
  # The interpreter: $VLP_PYTHON, else the repository's .venv, else python3 on PATH.
  if [[ -n ${VLP_PYTHON:-} ]]; then PYTHON=$VLP_PYTHON
  elif [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python
  else PYTHON=$(command -v python3) || vlp_die "no python3 on PATH and no $repo/.venv: set VLP_PYTHON"
  fi
  # Before any rank starts: a python without the project's packages would fail on every rank.
  local missing
  missing=$("$PYTHON" -c 'import importlib.util as u
print(" ".join(m for m in ("torch", "deepspeed", "webdataset", "omegaconf", "mlflow") if u.find_spec(m) is None))') \
    || vlp_die "$PYTHON does not run: set VLP_PYTHON"
  [[ -z $missing ]] || vlp_die "$PYTHON lacks $missing: install the project for it (python3 -m venv $repo/.venv &&" \
    "$repo/.venv/bin/pip install -e $repo), or set VLP_PYTHON to a python that has it"
  # No GPU on this node: DeepSpeed's CPU accelerator (gloo), unless the environment chose.
  if [[ -z ${DS_ACCELERATOR:-} ]] && ! nvidia-smi -L >/dev/null 2>&1; then export DS_ACCELERATOR=cpu; fi
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  # srun of Slurm 22.05-23.02 does not inherit --cpus-per-task from sbatch; this variable does.
  [[ -z ${SLURM_CPUS_PER_TASK:-} ]] || export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
  export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}
}

vlp_config() {
  local config=$1 repo=$2
  if [[ -f $config ]]; then echo "$config"
  elif [[ -f $repo/$config ]]; then echo "$repo/$config"
  else vlp_die "config not found: $config"
  fi
}

# run.output_dir after the overrides, for the log header (best effort: the trainer decides).
vlp_run_dir() {
  "$PYTHON" - "$@" 2>/dev/null <<'EOF' || echo "(run.output_dir of the config)"
import sys
from omegaconf import OmegaConf
cfg = OmegaConf.merge(OmegaConf.load(sys.argv[1]), OmegaConf.from_dotlist([a for a in sys.argv[2:] if "=" in a]))
print(OmegaConf.select(cfg, "run.output_dir", default=None) or "(the schema's default run.output_dir)")
EOF
}

_vlp_forward() {
  local sig=$1
  echo "launch: $(date -Is) got SIG$sig, forwarding it to the tasks (srun pid $SRUN_PID)"
  [[ $sig == USR1 ]] && VLP_PREEMPTED=1
  [[ $sig == TERM ]] && VLP_TERMINATED=1
  kill -s "$sig" "$SRUN_PID" 2>/dev/null || true
}

# What this run is, at the top of its log (a requeued run appends to the same file).
vlp_header() {
  echo "launch: $(date -Is) job $SLURM_JOB_ID (${SLURM_JOB_NAME:-}) SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}"
  echo "launch: nodes $SLURM_JOB_NODELIST, ${SLURM_NTASKS:-?} tasks, master $MASTER_ADDR:$MASTER_PORT," \
       "DS_ACCELERATOR=${DS_ACCELERATOR:-auto}, python $PYTHON"
  echo "launch: log $(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *StdOut=//p')"
}

# vlp_run ENTRY [ARGS...]: one task per rank; forward USR1/TERM; requeue a preempted run.
vlp_run() {
  local rc=0
  VLP_PREEMPTED=0 VLP_TERMINATED=0
  # The config first, in this shell: an error is one line and exit 2 (under srun --kill-on-bad-exit
  # the ranks' exit 2 would reach the job as 143, after a minute of start-up).
  "$PYTHON" "$@" --check || { rc=$?; echo "launch: the config check failed (exit $rc); no srun" >&2; return "$rc"; }
  echo "launch: srun $*"
  vlp_log_mark
  srun --kill-on-bad-exit=1 "$PYTHON" "$@" &
  SRUN_PID=$!
  trap '_vlp_forward USR1' USR1
  trap '_vlp_forward TERM' TERM
  while :; do
    rc=0
    wait "$SRUN_PID" || rc=$?
    # A trapped signal interrupts `wait` (status > 128) while srun still runs: wait again. (If
    # srun ends in that instant, rc is the signal's status; the requeue decision holds anyway.)
    if ((rc > 128)) && kill -0 "$SRUN_PID" 2>/dev/null; then continue; fi
    break
  done
  trap - USR1 TERM
  echo "launch: $(date -Is) srun exited with $rc"
  # Exit 3 is the trainer's "checkpointed, run me again". After the warning signal any other
  # failure (a rank killed before its handler was installed, or by --kill-on-bad-exit while
  # the others were already leaving) also means: go on from the latest complete checkpoint.
  if ((!VLP_TERMINATED)) && { ((rc == PREEMPTED_EXIT)) || ((VLP_PREEMPTED && rc != 0)); }; then
    echo "launch: requeueing job $SLURM_JOB_ID (it resumes from the latest complete checkpoint)"
    scontrol requeue "$SLURM_JOB_ID" \
      || echo "launch: requeue refused (--no-requeue?): sbatch again with the same run.output_dir to resume" >&2
  elif ((rc != 0 && !VLP_TERMINATED && !VLP_PREEMPTED)); then
    vlp_requeue_lost
  fi
  return "$rc"
}

# Where this run's lines of the job log start (the batch shell's stderr is the log; a requeued run
# appends to it): vlp_lost_rank reads only what srun and the ranks wrote since.
vlp_log_mark() {
  VLP_LOG=$(readlink -f "/proc/$$/fd/2" 2>/dev/null || true)
  if [[ -f $VLP_LOG ]]; then VLP_LOG_START=$(stat -c %s "$VLP_LOG"); else VLP_LOG=; VLP_LOG_START=0; fi
}

# Prints the line of this run's log that says a rank or node was lost and returns 0; returns 1 when
# there is none, or when a rank stopped on a config error (exit 2: a requeue would fail the same way).
vlp_lost_rank() {
  local - lines
  set +o pipefail
  [[ -n ${VLP_LOG:-} && -f $VLP_LOG ]] || return 1
  lines=$(tail -c "+$((VLP_LOG_START + 1))" "$VLP_LOG" | grep -E -m20 \
    -e 'srun: error: [^ ]+: tasks? [0-9,-]+: Killed' -e 'srun: error: Node failure' \
    -e 'Exited with exit code 2$' -e '^config error: ' -e 'CollectiveError: (collective failed|rendezvous)')
  if grep -qE 'Exited with exit code 2$|^config error: ' <<<"$lines"; then return 1; fi
  [[ -n $lines ]] || return 1
  # srun's word on the task or node first (the survivors' CollectiveError may come before it)
  { grep '^srun: error' <<<"$lines" || true; cat <<<"$lines"; } | head -n1 | cut -c1-300
}

# After a failed srun: a lost rank or node requeues the job (it resumes from the latest complete
# checkpoint), at most VLP_MAX_REQUEUES (default 3) times in all (SLURM_RESTART_COUNT, which
# preemptions count too); any other failure ends the job with its exit status.
vlp_requeue_lost() {
  local what max=${VLP_MAX_REQUEUES:-3} restarts=${SLURM_RESTART_COUNT:-0}
  what=$(vlp_lost_rank) || return 0
  if ((restarts >= max)); then
    echo "launch: a rank or node was lost ($what), but job $SLURM_JOB_ID has restarted $restarts times" \
         "(VLP_MAX_REQUEUES=$max): not requeueing; sbatch again with the same run.output_dir to resume" >&2
    return 0
  fi
  echo "launch: a rank or node was lost: $what"
  echo "launch: requeueing job $SLURM_JOB_ID after the lost rank/node (restart $((restarts + 1)) of at most $max;" \
       "it resumes from the latest complete checkpoint)"
  scontrol requeue "$SLURM_JOB_ID" \
    || echo "launch: requeue refused (--no-requeue?): sbatch again with the same run.output_dir to resume" >&2
}
