package sim

import (
	"os"
	"testing"
)

func TestSmokeNoFaults(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Faults = 0
	cfg.Ops = 200
	if os.Getenv("SIM_TRACE") != "" {
		cfg.Trace = os.Stderr
	}
	res := Run(cfg)
	t.Logf("ops=%d failed=%d simtime=%dms events=%d hash=%x", res.Ops, res.Failed, res.SimTime/1000, res.Events, res.TraceHash)
	for _, p := range res.Problems {
		t.Error(p)
	}
}
