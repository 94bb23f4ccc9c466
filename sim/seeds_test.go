package sim

import (
	"flag"
	"os"
	"testing"
)

var (
	flagSeeds  = flag.Int("sim.seeds", 20, "seeds for TestSeeds")
	flagFaults = flag.String("sim.faults", "all", "faults for TestSeeds")
	flagOps    = flag.Int("sim.ops", 2000, "ops per run for TestSeeds")
	flagFirst  = flag.Uint64("sim.first", 1, "first seed")
)

func TestSeeds(t *testing.T) {
	f, err := ParseFaults(*flagFaults)
	if err != nil {
		t.Fatal(err)
	}
	fails := 0
	for seed := *flagFirst; seed < *flagFirst+uint64(*flagSeeds); seed++ {
		cfg := DefaultConfig()
		cfg.Seed = seed
		cfg.Faults = f
		cfg.Ops = *flagOps
		if os.Getenv("SIM_TRACE") != "" {
			cfg.Trace = os.Stderr
		}
		res := Run(cfg)
		if !res.OK() {
			fails++
			t.Errorf("seed %d: ops=%d failed=%d simtime=%dms: %v", seed, res.Ops, res.Failed, res.SimTime/1000, res.Problems)
		}
	}
	t.Logf("%d/%d seeds failed", fails, *flagSeeds)
}
