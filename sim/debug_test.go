package sim

import (
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/linearizability"
)

// TestDebugSeed replays one seed with a full trace, for investigating a
// failure: SIM_SEED=52 SIM_BLOCK=23 go test ./sim -run TestDebugSeed -v
// It runs the default configuration (SIM_FAULTS, SIM_NODES, SIM_COPIES,
// SIM_VDIS, SIM_CLIENTS and SIM_OPS override it; SIM_QUIET, SIM_CODEC set it) and always passes unless
// the replay itself fails to run.
func TestDebugSeed(t *testing.T) {
	seed, err := strconv.ParseUint(os.Getenv("SIM_SEED"), 10, 64)
	if err != nil {
		seed = 1
	}
	cfg := DefaultConfig()
	cfg.Seed = seed
	for name, field := range map[string]*int{"SIM_HEARTBEAT": &cfg.HeartbeatTicks, "SIM_NODES": &cfg.Nodes, "SIM_COPIES": &cfg.Copies, "SIM_VDIS": &cfg.VDIs,
		"SIM_CLIENTS": &cfg.Clients, "SIM_OPS": &cfg.Ops} {
		if v := os.Getenv(name); v != "" {
			if *field, err = strconv.Atoi(v); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
	}
	if f := os.Getenv("SIM_FAULTS"); f != "" {
		if cfg.Faults, err = ParseFaults(f); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Codec = os.Getenv("SIM_CODEC") != ""
	cfg.Quiet = os.Getenv("SIM_QUIET") != ""
	if os.Getenv("SIM_LIFECYCLE") == "0" {
		cfg.Lifecycle = false
	}
	out := os.Getenv("SIM_TRACE_FILE")
	if out == "" {
		out = os.DevNull
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg.Trace = f
	if o := os.Getenv("SIM_OID"); o != "" {
		v, err := strconv.ParseUint(o, 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		cfg.TraceOID = core.OID(v)
	}
	s := newSim(cfg)
	res := s.run()
	t.Logf("problems: %v", res.Problems)
	t.Logf("state: %s", s.describe())
	for _, nd := range s.nodes {
		if nd.started && nd.up {
			t.Logf("node %d busy: %v", nd.info.ID, nd.n.Busy())
		}
	}
	block, err := strconv.ParseUint(os.Getenv("SIM_BLOCK"), 10, 64)
	if err != nil {
		return
	}
	for _, op := range s.hist.Ops() {
		if op.Block != block {
			continue
		}
		k := "w"
		if op.Kind == linearizability.Read {
			k = "r"
		}
		ret := fmt.Sprint(op.Return)
		if op.Return == linearizability.Pending {
			ret = "?"
		}
		t.Logf("%s v=%#x call=%d ret=%s %s", k, op.Value, op.Call, ret, op.Note)
	}
}
