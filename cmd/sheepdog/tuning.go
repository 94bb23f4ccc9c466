package main

import (
	"flag"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
)

// tuning is the process-wide set-up of a process that runs sheep: the Go
// collector's tuning and the threads' scheduling policy.
//
// By default a node's heap has a fixed budget (--memory, as GOMEMLIMIT)
// and the collector runs only when the heap reaches it. Most of a node's
// allocations are short-lived message and I/O buffers, while its live heap
// swings with the writes it holds until they are applied. With a goal
// proportional to the live heap (GOGC), every swing returned memory to
// the system and faulted it in again when the heap grew back; a page
// fault is dear on some virtual machines. On the 2-vCPU guest the figures
// come from (shadow page tables), a 3-node cluster at GOGC=400, the
// previous default, took about one fault per replicated 4 KiB write at
// QD32, spent 70-90 µs of CPU per write on a replica against 30 µs
// without faults, and reached 5000-6000 IOPS against 10000-11500 with a
// 256 MiB budget; its nodes' resident memory was also larger (400-850 MB
// against 250 MB).
type tuning struct {
	percent int
	memory  string
	batch   bool
}

const (
	defaultGCPercent = -1
	defaultMemory    = "256M"
)

func (g *tuning) flags(fs *flag.FlagSet) {
	fs.IntVar(&g.percent, "gc-percent", defaultGCPercent, "Go GC target percentage (GOGC): also collect when the heap grows by this much over the live heap; -1 collects only at --memory; a GOGC environment variable wins")
	fs.StringVar(&g.memory, "memory", defaultMemory, "memory budget of a node's Go heap (GOMEMLIMIT, per node): the collector runs when the heap reaches it; 0 for none; a GOMEMLIMIT environment variable wins")
	fs.BoolVar(&g.batch, "sched-batch", true, "run the node's threads under SCHED_BATCH (Linux): a thread woken by a message does not preempt the running one")
}

// gcSettings is what to set: a percentage and a limit, each only when
// its ok is true (else the runtime keeps its own, from the environment).
type gcSettings struct {
	percent  int
	setPct   bool
	limit    int64
	setLimit bool
}

// resolve works out the settings for nodes nodes in the process, given
// the GOGC and GOMEMLIMIT environment variables.
func (g *tuning) resolve(nodes int, gogc, gomemlimit string) (gcSettings, error) {
	var s gcSettings
	mem, err := parseSize(g.memory)
	if err != nil {
		return s, usagef("--memory: %v", err)
	}
	if gomemlimit == "" && mem > 0 {
		per := int64(min(mem, math.MaxInt64/uint64(max(nodes, 1))))
		s.limit, s.setLimit = per*int64(max(nodes, 1)), true
	}
	if gogc == "" {
		s.percent, s.setPct = g.percent, true
		if g.percent < 0 && !s.setLimit && (gomemlimit == "" || gomemlimit == "off") {
			s.percent = 100 // no budget at all: never run the collector off
		}
	}
	return s, nil
}

// apply sets up a process running nodes nodes. Only a bad flag is an
// error: a scheduling policy the system refuses is logged.
func (g *tuning) apply(nodes int, log *slog.Logger) error {
	s, err := g.resolve(nodes, os.Getenv("GOGC"), os.Getenv("GOMEMLIMIT"))
	if err != nil {
		return err
	}
	if s.setLimit {
		debug.SetMemoryLimit(s.limit)
	}
	if s.setPct {
		debug.SetGCPercent(s.percent)
	}
	if g.batch {
		if err := batchScheduling(); err != nil {
			log.Warn("threads keep their scheduling policy", "err", err)
		}
	}
	return nil
}
