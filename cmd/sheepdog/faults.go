package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sheepdog-go/sheepdog/faults"
)

func faultsCommand() *command {
	var (
		seed, runs, nodes, count, workers int
		kinds, plant, out, bin, logLevel  string
		netMode                           string
		tick                              time.Duration
		keep                              bool
	)
	return &command{
		name:  "faults",
		short: "the fault harness: real sheep processes, real faults, real NBD clients (root)",
		long: `Runs seeds seed..seed+runs-1. Each run starts 3-5 sheep in a private network
namespace, breaks the network (nftables), the processes (kill -9, SIGSTOP,
SIGTERM) and the disks (ENOSPC on tmpfs, bit flips, deleted objects, cut
journals, disk replacements), one fault at a time, while NBD clients write
and read, and then checks linearizability per block, that nothing
acknowledged and flushed is lost, vdi check, and full redundancy within 60s
of every heal. A failed run keeps its directory under --out.`,
		flags: func(fs *flag.FlagSet) {
			fs.IntVar(&seed, "seed", 1, "first seed")
			fs.IntVar(&runs, "runs", 1, "number of seeds")
			fs.IntVar(&nodes, "nodes", 0, "nodes per run (default: 3-5 from the seed)")
			fs.IntVar(&count, "faults", 4, "faults per run")
			fs.StringVar(&kinds, "kinds", "all", "fault kinds: "+strings.Join(faults.Kinds, ", "))
			fs.StringVar(&plant, "plant", "", "planted bug for every node (sheep --plant)")
			fs.StringVar(&out, "out", "faults-out", "directory for the directories of failed runs")
			fs.StringVar(&bin, "bin", "", "sheepdog binary for the nodes (default: this one)")
			fs.DurationVar(&tick, "tick", 10*time.Millisecond, "the nodes' --tick")
			fs.IntVar(&workers, "workers", 3, "requests each client keeps in flight")
			fs.BoolVar(&keep, "keep", false, "keep the directories of passing runs too")
			fs.StringVar(&netMode, "net", faults.NetAuto, "network faults: auto (nftables where it works, else a TCP proxy), nftables, or proxy")
			fs.StringVar(&logLevel, "log-level", "warn", "harness progress on stderr: debug, info, warn or error")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usagef("faults takes no arguments (got %q)", args)
			}
			ks, err := faults.ParseKinds(kinds)
			if err != nil {
				return usagef("--kinds: %v", err)
			}
			if err := checkTick(tick); err != nil {
				return err
			}
			log, err := newLogger(e, logLevel)
			if err != nil {
				return err
			}
			if bin == "" {
				if bin, err = os.Executable(); err != nil {
					return fmt.Errorf("faults: %w", err)
				}
			}
			byKind := map[string][]time.Duration{}
			never := map[string]int{}
			failed := 0
			var failedSeeds []uint64
			start := time.Now()
			for i := 0; i < runs; i++ {
				rep, err := faults.Run(ctx, faults.Config{
					Seed: uint64(seed + i), Bin: bin, Out: out, Nodes: nodes, Faults: count, Kinds: ks,
					Plant: plant, Tick: tick, Workers: workers, Keep: keep, Log: log, Net: netMode,
				})
				if err != nil {
					return fmt.Errorf("faults: seed %d: %w", seed+i, err)
				}
				fmt.Fprintln(e.stdout, rep.Line())
				for _, p := range rep.Problems {
					fmt.Fprintf(e.stdout, "  problem: %s\n", p)
				}
				if !rep.OK() {
					failed++
					failedSeeds = append(failedSeeds, rep.Seed)
				}
				for _, h := range rep.Heals {
					if h.Err != "" {
						never[h.Kind]++
					} else {
						byKind[h.Kind] = append(byKind[h.Kind], h.Took)
					}
				}
			}
			var names []string
			for k := range byKind {
				names = append(names, k)
			}
			for k := range never {
				if byKind[k] == nil {
					names = append(names, k)
				}
			}
			sort.Strings(names)
			fmt.Fprintln(e.stdout, "faults by kind (count, heal time min/median/max):")
			for _, k := range names {
				d := slices.Clone(byKind[k])
				slices.Sort(d)
				line := fmt.Sprintf("  %-22s %3d", k, len(d)+never[k])
				if len(d) > 0 {
					line += fmt.Sprintf("  %.1fs / %.1fs / %.1fs", d[0].Seconds(), d[len(d)/2].Seconds(), d[len(d)-1].Seconds())
				}
				if never[k] > 0 {
					line += fmt.Sprintf("  (%d never healed)", never[k])
				}
				fmt.Fprintln(e.stdout, line)
			}
			fmt.Fprintf(e.stdout, "runs=%d failures=%d wall=%s\n", runs, failed, time.Since(start).Round(time.Second))
			if failed > 0 {
				slog.Default().Debug("failed seeds", "seeds", failedSeeds)
				return fmt.Errorf("%d of %d runs failed (seeds %v)", failed, runs, failedSeeds)
			}
			return nil
		},
	}
}
