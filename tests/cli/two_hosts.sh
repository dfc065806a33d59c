#!/usr/bin/env bash
# Data-parallel training across two "machines": rank 1 runs in a network namespace of its own,
# joined to this one by a veth pair, and MASTER_ADDR is rank 0's address on that link, so
# neither rank can take the loopback address for the other's. The two ranks x batch 2, each
# with a run folder of its own, stopped and resumed, must give the model one process x batch 4
# gives. Needs root and ip(8) for the namespace: exits 77
# (CTest: skipped) where it cannot make one.
#   two_hosts.sh PCONV CHECK WORK_DIR PORT
set -uo pipefail
pconv=$1 check=$2 work=$3 port=$4
if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null; then
  echo "skipped: needs root and ip(8) to make a network namespace"
  exit 77
fi
ns=pconv-test-$$
host_side=pcv$$a
ns_side=pcv$$b
cleanup() {
  ip netns del "$ns" 2>/dev/null
  ip link del "$host_side" 2>/dev/null
}
trap cleanup EXIT
# What a run killed on its timeout (no EXIT trap then) left behind would catch this one's packets:
# removed, where the run that made it (the number in its name) is gone. (Two runs at once would
# still share the link-local addresses and the port, and fail: one run at a time.)
for stale in $(ip netns list 2>/dev/null | grep -o '^pconv-test-[0-9]*'); do
  kill -0 "${stale#pconv-test-}" 2>/dev/null || ip netns del "$stale"
done
for stale in $(ip -o link show 2>/dev/null | grep -o 'pcv[0-9]*a'); do
  pid=${stale#pcv}
  kill -0 "${pid%a}" 2>/dev/null || ip link del "$stale"
done
# A link-local /30 of its own: it routes nothing but the pair.
if ! { ip netns add "$ns" && ip link add "$host_side" type veth peer name "$ns_side" &&
       ip link set "$ns_side" netns "$ns" && ip addr add 169.254.77.1/30 dev "$host_side" &&
       ip link set "$host_side" up && ip netns exec "$ns" ip addr add 169.254.77.2/30 dev "$ns_side" &&
       ip netns exec "$ns" ip link set "$ns_side" up && ip netns exec "$ns" ip link set lo up; }; then
  echo "skipped: cannot make a network namespace here"
  exit 77
fi

rm -rf "$work"
set -e
"$pconv" masks -n 8 -o "$work/photos" --size 40x36 --seed 5 --min-ratio 0.2 --max-ratio 0.5 \
  >/dev/null 2>&1
common=(train --data "$work/photos" --size 32 --depth 3 --width 8 --max-width 16 --workers 1
        --threads 1 --seed 3 --validate-every 0 --sample-every 0 --checkpoint-every 0)
"$pconv" "${common[@]}" --steps 3 --batch 4 -o "$work/single" >/dev/null 2>&1
set +e
# Each rank has a run folder of its own, as on machines that share none: stopped after 2 steps
# and resumed, rank 1 resumes from rank 0's checkpoint, which only rank 0's folder holds.
ranks=(env WORLD_SIZE=2 MASTER_ADDR=169.254.77.1 MASTER_PORT="$port")
two_hosts() {
  "${ranks[@]}" RANK=0 "$pconv" "${common[@]}" --batch 2 --timeout 30 -o "$work/host0" "$@" \
    >"$work/rank0.log" 2>&1 &
  local rank0=$!
  ip netns exec "$ns" "${ranks[@]}" RANK=1 "$pconv" "${common[@]}" --batch 2 --timeout 30 \
    -o "$work/host1" "$@" >"$work/rank1.log" 2>&1
  local code1=$?
  wait "$rank0"
  local code0=$?
  cat "$work/rank0.log" "$work/rank1.log"
  echo "exit codes: rank 0 $code0, rank 1 $code1"
  [ "$code0" -eq 0 ] && [ "$code1" -eq 0 ]
}
two_hosts --steps 2 || exit 1
[ ! -e "$work/host1/checkpoint.pt" ] || { echo "rank 1 wrote a checkpoint"; exit 1; }
two_hosts --steps 3 --resume || exit 1
grep -q "resuming at step 2, after 8 examples" "$work/rank0.log" || exit 1
"$check" compare "$work/single/model.pt" "$work/host0/model.pt" 1e-6
