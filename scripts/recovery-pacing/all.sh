#!/bin/bash
cd "$(dirname "$0")"; export B=${B:-/tmp/rm/sheepdog} W=${W:-/tmp/rm/w}
export DATA=512
for k in 1 2 3; do
  echo "== idle default $k"; ./run.sh idle 2>&1 | grep -E "restart|checked"
  echo "== cp $k"; rm -rf $W/cpdst; sync; s=$(date +%s.%N); cp -r $W/n2/obj $W/cpdst && sync; e=$(date +%s.%N); echo "cp $(du -sb $W/cpdst | cut -f1) bytes in $(python3 -c "print(round($e-$s,2))") s"
  echo "== fio no-yield $k"; ./run.sh fio --recovery-busy-rate 0 2>&1 | grep -E "IOPS|restart|checked"
  echo "== fio default(yield 16M) $k"; ./run.sh fio 2>&1 | grep -E "IOPS|restart|checked"
  echo "== fio cap32M no-yield $k"; ./run.sh fio --recovery-rate 32M --recovery-busy-rate 0 2>&1 | grep -E "IOPS|restart|checked"
done
