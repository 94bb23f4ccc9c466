package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/sheepdog-go/sheepdog/sim"
)

func simCommand() *command {
	var (
		seed                      uint64
		runs, nodes, copies, vdis int
		clients, ops, parallel    int
		heartbeat                 int
		quiet                     bool
		faults, plant, out        string
		cpuProfile, memProfile    string
		traceHash, lifecycle      bool
	)
	d := sim.DefaultConfig()
	return &command{
		name:  "sim",
		short: "run the seeded fault simulator and check linearizability",
		long: `Runs seeds --seed .. --seed+--runs-1 of a simulated cluster. Each run injects the
chosen faults while clients do overlapping I/O on a few hot blocks, heals, and
checks linearizability per block, full identical redundancy and (with
powerloss) that nothing acknowledged and flushed is lost. With --lifecycle (the
default) it also takes snapshots while clients write, clones them into volumes
with writers of their own, rolls back, flattens and deletes, and checks that
snapshots never change, clones and parents diverge independently, nothing
referenced is reclaimed and, once everything is deleted, nothing is left on any
node. A failing run prints
the command that replays it; with --out its porcupine visualisation is written
there. Fault kinds: all, none, or a list of ` + strings.Join(sim.FaultNames(), ", ") + `.`,
		flags: func(fs *flag.FlagSet) {
			fs.Uint64Var(&seed, "seed", 1, "first seed")
			fs.IntVar(&runs, "runs", 1, "number of seeds to run")
			fs.IntVar(&nodes, "nodes", d.Nodes, "initial nodes")
			fs.IntVar(&copies, "copies", d.Copies, "replicas per object")
			fs.IntVar(&vdis, "vdis", d.VDIs, "volumes")
			fs.IntVar(&clients, "clients", d.Clients, "concurrent clients per volume")
			fs.IntVar(&ops, "ops", d.Ops, "client operations per run")
			fs.StringVar(&faults, "faults", "all", "fault kinds to inject")
			fs.StringVar(&plant, "plant", "", "planted bug(s) to switch on: "+strings.Join(sim.PlantNames(), ", "))
			fs.BoolVar(&lifecycle, "lifecycle", d.Lifecycle, "snapshots, clones, rollbacks, flattens and deletes in the workload")
			fs.IntVar(&heartbeat, "heartbeat", 0, "raft heartbeat interval in ticks (0: the daemon's default)")
			fs.BoolVar(&quiet, "quiet", d.Quiet, "tick quiet nodes in bursts, as the daemon does")
			fs.StringVar(&out, "out", "", "directory for the visualisations of failing runs")
			fs.BoolVar(&traceHash, "trace-hash", false, "print each run's trace hash")
			fs.IntVar(&parallel, "parallel", 0, "runs at once (0: one per CPU)")
			fs.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the runs to this file (go tool pprof)")
			fs.StringVar(&memProfile, "memprofile", "", "write a heap allocation profile after the runs to this file")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usagef("sim takes no arguments")
			}
			cfg := sim.DefaultConfig()
			var err error
			if cfg.Faults, err = sim.ParseFaults(faults); err != nil {
				return usagef("%v", err)
			}
			if cfg.Bugs, err = sim.ParsePlant(plant); err != nil {
				return usagef("%v", err)
			}
			if runs < 1 || nodes < 1 || copies < 1 || vdis < 1 || clients < 1 || ops < 1 {
				return usagef("--runs, --nodes, --copies, --vdis, --clients and --ops must be positive")
			}
			if heartbeat < 0 || heartbeat >= 10 {
				return usagef("--heartbeat must be 0 (the default) or fewer ticks than an election timeout (10)")
			}
			cfg.HeartbeatTicks, cfg.Quiet = heartbeat, quiet
			cfg.Nodes, cfg.Copies, cfg.VDIs, cfg.Clients, cfg.Ops, cfg.Lifecycle = nodes, copies, vdis, clients, ops, lifecycle
			if out != "" {
				if err := os.MkdirAll(out, 0o755); err != nil {
					return fmt.Errorf("create %s: %w", out, err)
				}
				cfg.OutDir = out
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			if memProfile != "" {
				defer func() {
					f, err := os.Create(memProfile)
					if err != nil {
						fmt.Fprintf(e.stderr, "memprofile: %v\n", err)
						return
					}
					defer f.Close()
					if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
						fmt.Fprintf(e.stderr, "memprofile: %v\n", err)
					}
				}()
			}
			b := sim.Batch{Config: cfg, First: seed, Runs: runs, Parallel: parallel}
			sum := b.Run(ctx, func(r sim.Result) {
				if traceHash {
					fmt.Fprintf(e.stdout, "seed=%d hash=%016x\n", r.Seed, r.TraceHash)
				}
				if !r.OK() {
					rc := cfg
					rc.Seed = r.Seed
					vis := ""
					if r.HTML != "" {
						vis = " visualisation=" + r.HTML
					}
					fmt.Fprintf(e.stdout, "FAIL seed=%d replay=%q%s: %s\n", r.Seed, sim.ReplayCommand(rc), vis, strings.Join(r.Problems, "; "))
				}
			})
			fmt.Fprintln(e.stdout, sum)
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted after %d runs", sum.Runs)
			}
			if len(sum.Failures) > 0 {
				return fmt.Errorf("%d of %d runs failed", len(sum.Failures), sum.Runs)
			}
			return nil
		},
	}
}
