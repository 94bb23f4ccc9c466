package sim

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

// Batch runs seeds First..First+Runs-1 of a configuration.
type Batch struct {
	Config   Config // Seed is ignored
	First    uint64
	Runs     int
	Parallel int // concurrent runs; 0 means GOMAXPROCS
}

// Summary is the outcome of a batch.
type Summary struct {
	Runs     int
	Failures []Result // failing runs, by seed
	Ops      int
	SimTime  time.Duration
	Wall     time.Duration
	Hashes   map[uint64]uint64 // seed → trace hash
}

// Run executes the batch; report is called once per finished run, in seed
// order, from the calling goroutine.
func (b Batch) Run(ctx context.Context, report func(Result)) Summary {
	par := b.Parallel
	if par <= 0 {
		par = runtime.GOMAXPROCS(0)
	}
	start := time.Now()
	results := make([]Result, b.Runs)
	done := make([]chan struct{}, b.Runs)
	for i := range done {
		done[i] = make(chan struct{})
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				cfg := b.Config
				cfg.Seed = b.First + uint64(i)
				results[i] = Run(cfg)
				close(done[i])
			}
		}()
	}
	go func() {
		defer close(work)
		for i := 0; i < b.Runs; i++ {
			select {
			case work <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	sum := Summary{Hashes: map[uint64]uint64{}}
	for i := 0; i < b.Runs; i++ {
		select {
		case <-done[i]:
		case <-ctx.Done():
			wg.Wait()
			sum.Wall = time.Since(start)
			return sum
		}
		r := results[i]
		sum.Runs++
		sum.Ops += r.Ops
		sum.SimTime += time.Duration(r.SimTime) * time.Microsecond
		sum.Hashes[r.Seed] = r.TraceHash
		if !r.OK() {
			sum.Failures = append(sum.Failures, r)
		}
		if report != nil {
			report(r)
		}
	}
	wg.Wait()
	sum.Wall = time.Since(start)
	sort.Slice(sum.Failures, func(i, j int) bool { return sum.Failures[i].Seed < sum.Failures[j].Seed })
	return sum
}

// ReplayCommand is the command line that replays one seed of cfg.
func ReplayCommand(cfg Config) string {
	d := DefaultConfig()
	args := []string{"sheepdog", "sim", fmt.Sprintf("--seed %d", cfg.Seed), "--runs 1"}
	if cfg.Nodes != d.Nodes {
		args = append(args, fmt.Sprintf("--nodes %d", cfg.Nodes))
	}
	if cfg.Copies != d.Copies {
		args = append(args, fmt.Sprintf("--copies %d", cfg.Copies))
	}
	if cfg.VDIs != d.VDIs {
		args = append(args, fmt.Sprintf("--vdis %d", cfg.VDIs))
	}
	if cfg.Clients != d.Clients {
		args = append(args, fmt.Sprintf("--clients %d", cfg.Clients))
	}
	if cfg.Ops != d.Ops {
		args = append(args, fmt.Sprintf("--ops %d", cfg.Ops))
	}
	if cfg.Faults != d.Faults {
		args = append(args, "--faults "+cfg.Faults.String())
	}
	if cfg.Lifecycle != d.Lifecycle {
		args = append(args, fmt.Sprintf("--lifecycle=%v", cfg.Lifecycle))
	}
	if cfg.HeartbeatTicks != d.HeartbeatTicks {
		args = append(args, fmt.Sprintf("--heartbeat %d", cfg.HeartbeatTicks))
	}
	if cfg.Quiet != d.Quiet {
		args = append(args, fmt.Sprintf("--quiet=%v", cfg.Quiet))
	}
	if p := PlantName(cfg.Bugs); p != "" {
		args = append(args, "--plant "+p)
	}
	return strings.Join(args, " ")
}

// String is the one-line summary `sheepdog sim` ends with.
func (s Summary) String() string {
	ratio := 0.0
	if s.Wall > 0 {
		ratio = float64(s.SimTime) / float64(s.Wall)
	}
	return fmt.Sprintf("runs=%d failures=%d ops=%d simtime=%s wall=%s sim/wall=%.1f",
		s.Runs, len(s.Failures), s.Ops, s.SimTime.Round(time.Millisecond), s.Wall.Round(time.Millisecond), ratio)
}
