#!/usr/bin/env bash
# Data-parallel training on this machine: N pconv train processes (ranks) joined through
# torch.distributed's c10d (TCPStore on MASTER_ADDR:MASTER_PORT, Gloo), as torchrun would start
# them. --batch is per rank; rank 0 writes the run folder. With --device cuda, rank r trains on
# cuda:r (its LOCAL_RANK) and CUDA tensors go over NCCL. A rank that fails makes the others
# fail too (a collective times out after --timeout seconds) and this script exits non-zero.
# The ranks share this machine's cores: each takes its share of the CPU threads (LOCAL_WORLD_SIZE
# tells them how many they are) unless --threads or OMP_NUM_THREADS says otherwise.
#
#   scripts/train-parallel.sh N [pconv train options...]
#   PCONV=path/to/pconv MASTER_PORT=29500 scripts/train-parallel.sh 2 --data photos -o run --batch 2
#
# Several machines: start on every machine, for every local process, with the same
# MASTER_ADDR (the address of rank 0's machine, reachable from all) and MASTER_PORT,
# WORLD_SIZE = all processes, RANK = the process's global rank, LOCAL_RANK its rank on its
# machine and LOCAL_WORLD_SIZE the processes on its machine, e.g. on machine 2 of 2 with 2 each:
#   RANK=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=2 WORLD_SIZE=4 MASTER_ADDR=10.0.0.1 pconv train ...
#   RANK=3 LOCAL_RANK=1 LOCAL_WORLD_SIZE=2 WORLD_SIZE=4 MASTER_ADDR=10.0.0.1 pconv train ...
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pconv=${PCONV:-${PCONV_BUILD_DIR:-$root/build}/app/pconv}
if [ $# -lt 1 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,18p' "$0" >&2
  exit 2
fi
world=$1
shift
export WORLD_SIZE=$world LOCAL_WORLD_SIZE=$world MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=${MASTER_PORT:-29500}
pids=()
for ((rank = 0; rank < world; ++rank)); do
  RANK=$rank LOCAL_RANK=$rank "$pconv" train "$@" &
  pids+=($!)
done
# Ctrl-C reaches every rank (same process group) and rank 0 saves its checkpoint; this script
# waits for the ranks to finish, so the prompt comes back only after the save and the exit code
# is the ranks' own (130). A SIGTERM sent to this script alone is passed on to the ranks.
trap ':' INT
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
status=0
for pid in "${pids[@]}"; do
  while true; do
    wait "$pid"
    code=$?
    # A wait cut short by a trapped signal returns >128 with the rank still running; one that
    # ended meanwhile is waited for again, for its own status.
    if ! kill -0 "$pid" 2>/dev/null; then
      if [ "$code" -gt 128 ]; then
        wait "$pid"
        code=$?
      fi
      break
    fi
  done
  [ "$code" -ne 0 ] && [ "$status" -eq 0 ] && status=$code
done
exit "$status"
