package main

import (
	"flag"
	"math"
	"strconv"

	"github.com/sheepdog-go/sheepdog/daemon"
)

// recoveryFlags are the pacing of recovery on `sheep` and `local`.
type recoveryFlags struct {
	rate, busyRate string
}

func (r *recoveryFlags) flags(fs *flag.FlagSet) {
	fs.StringVar(&r.rate, "recovery-rate", "0", "cap on the bytes per second recovery copies into a node (e.g. 100M); 0 for unlimited")
	fs.StringVar(&r.busyRate, "recovery-busy-rate", sizeFlagStr(daemon.DefaultRecoveryBusyRate),
		"cap on the bytes per second recovery copies into a node while clients do I/O on it (e.g. 16M); 0 for recovery at full speed regardless")
}

// apply sets the daemon's rates.
func (r *recoveryFlags) apply(cfg *daemon.Config) error {
	rate, err := parseRate(r.rate)
	if err != nil {
		return usagef("--recovery-rate: %v", err)
	}
	busy, err := parseRate(r.busyRate)
	if err != nil {
		return usagef("--recovery-busy-rate: %v", err)
	}
	if busy == 0 {
		busy = -1 // the daemon's "never yield"; its 0 is the default
	}
	cfg.RecoveryRate, cfg.RecoveryBusyRate = rate, busy
	return nil
}

// parseRate reads a rate in bytes per second like 100M, with an optional
// "/s".
func parseRate(s string) (int64, error) {
	if n := len(s); n > 2 && s[n-2:] == "/s" {
		s = s[:n-2]
	}
	v, err := parseSize(s)
	if err != nil {
		return 0, err
	}
	return int64(min(v, math.MaxInt64)), nil
}

// sizeFlagStr writes a size as parseSize reads it.
func sizeFlagStr(v uint64) string {
	for _, u := range []struct {
		s     string
		shift uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if v >= 1<<u.shift && v%(1<<u.shift) == 0 {
			return strconv.FormatUint(v>>u.shift, 10) + u.s
		}
	}
	return strconv.FormatUint(v, 10)
}
