#!/bin/bash
# Measures a wiped node refilling in a 3-node copies=3 cluster (README,
# "Recovery runs at full speed..."): MODE idle, or fio (4K randwrite at QD1
# through fio's nbd engine into the first HOT MiB, default 16, before and
# during the copy). Extra arguments go to the restarted node (e.g.
# --recovery-rate 32M). Seeds $W (emptied first) once with DATA MiB (default
# 512) and reuses it. all.sh runs every case three times.
# Usage: run.sh MODE [flags for the restarted node...]
set -u
B=${B:-/tmp/rm/sheepdog}  # go build -o $B ./cmd/sheepdog
W=${W:-/tmp/rm/w}
DATA=${DATA:-512}
MODE=$1; shift
A=127.0.0.1:7100
start_node() { # i flags...
  local i=$1; shift
  local join=""; [ $i -gt 0 ] && join="--join $A"
  $B sheep --dir $W/n$i --listen 127.0.0.1:710$i --nbd 127.0.0.1:1090$i $join --log-level warn "$@" >>$W/log$i 2>&1 &
  echo $! > $W/pid$i
}
alldone() { $B node recovery -a $A --json 2>/dev/null | python3 -c '
import json,sys
rows=json.load(sys.stdin)
ok=len(rows)==3 and all(r.get("recovery_all_done") and not r["dir"].startswith("unreachable") for r in rows) and len({r["epoch"] for r in rows})==1
sys.exit(0 if ok else 1)'; }
if [ ! -d $W/seed ]; then
  rm -rf $W; mkdir -p $W
  for i in 0 1 2; do start_node $i; sleep 0.5; done
  sleep 2
  $B cluster format --copies 3 -a $A >/dev/null
  $B vdi create -a $A v0 ${DATA}M >/dev/null
  head -c $((DATA<<20)) /dev/urandom > $W/data.bin
  $B vdi write --file $W/data.bin -a $A v0 2>/dev/null
  rm -f $W/data.bin
  until alldone; do sleep 0.5; done
  for i in 0 1 2; do kill $(cat $W/pid$i); done; sleep 2
  mkdir -p $W/seed; cp -a $W/n0 $W/n1 $W/n2 $W/seed/
fi
# fresh copy of the seeded cluster for each run
for i in 0 1 2; do rm -rf $W/n$i; cp -a $W/seed/n$i $W/n$i; done
for i in 0 1 2; do start_node $i; done
sleep 1; until alldone; do sleep 0.5; done
if [ $MODE = fio ]; then
  fio --name=base --ioengine=nbd --uri=nbd://127.0.0.1:10900/v0 --rw=randwrite --bs=4k --iodepth=1 --size=${HOT:-16}M --time_based --runtime=8 --output-format=json > $W/fio-base.json 2>/dev/null
  echo "baseline IOPS $(python3 -c "import json;s=open('$W/fio-base.json').read();print(round(json.loads(s[s.index('{'):],strict=False)['jobs'][0]['write']['iops']))")"
fi
kill -9 $(cat $W/pid2); sleep 0.3; rm -rf $W/n2
T0=$(date +%s.%N)
start_node 2 "$@"
if [ $MODE = fio ]; then
  fio --name=rec --ioengine=nbd --uri=nbd://127.0.0.1:10900/v0 --rw=randwrite --bs=4k --iodepth=1 --size=${HOT:-16}M --time_based --runtime=120 \
    --write_iops_log=$W/iops --log_avg_msec=500 --output-format=json > $W/fio-rec.json 2>/dev/null &
  FIO=$!
fi
python3 - $T0 $B > $W/phase.txt <<'PY'
import json,subprocess,sys,time
t0=float(sys.argv[1]); listed=None; fin=None
def ask(addr, *cmd):
    try:
        return json.loads(subprocess.run([sys.argv[2],*cmd,"-a",addr,"--json"],capture_output=True,timeout=10).stdout)
    except Exception:
        return None
while True:
    me=ask("127.0.0.1:7102","node","info")  # the node itself: no fan-out to a dead member
    now=time.time()
    if me and me["recovery_total"]>0 and not me["recovery_listing"]:
        if listed is None: listed=now
        if me["recovery_finished"] and fin is None: fin=now; total=me["recovery_bytes_total"]
    if fin:
        rows=ask("127.0.0.1:7100","node","recovery") or []
        if len(rows)==3 and all(r.get("recovery_all_done") for r in rows) and len({r["epoch"] for r in rows})==1:
            print(listed-t0, fin-t0, total); break
    time.sleep(0.05)
PY
read L D BYTES < $W/phase.txt
if [ $MODE = fio ]; then
  kill -INT $FIO; wait $FIO 2>/dev/null
fi
python3 -c "
l,d,b=$L,$D,$BYTES
print('restart to node 2 finished %.2f s; copy phase %.2f s for %d MiB: %.1f MiB/s' % (d, d-l, b>>20, b/1048576/(d-l)))"
$B node recovery -a $A | head -5
if [ $MODE = fio ]; then
  python3 - $W/iops_iops.1.log $L $D <<'PY'
import sys
l,d=float(sys.argv[2])*1000,float(sys.argv[3])*1000; tot=0; n=0
for line in open(sys.argv[1]):
    t,v=[int(x.strip()) for x in line.split(",")[:2]]
    if l+500 <= t <= d: tot+=v; n+=1
print("copy-phase IOPS", round(tot/max(n,1)), "over", n, "samples of 0.5 s")
PY
fi
$B vdi check -a $A v0 | tail -2
for i in 0 1 2; do kill $(cat $W/pid$i) 2>/dev/null; done
sleep 1.5
