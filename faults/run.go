package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/sheepdog-go/sheepdog/daemon"
	"github.com/sheepdog-go/sheepdog/linearizability"
)

// Config is one run of the harness.
type Config struct {
	Seed   uint64
	Bin    string   // the sheepdog binary
	Out    string   // parent directory of the run directories (default: a temporary one)
	Nodes  int      // 0: 3-5, from the seed
	Faults int      // faults in the run (default 4)
	Kinds  []string // fault kinds to draw from (default all)
	Plant  string   // sheep --plant for every node
	Tick   time.Duration
	// Workers is the number of requests each client keeps in flight.
	Workers int
	// OpTimeout is how long a client waits for one request before it
	// gives up on its node (the outcome is then unknown).
	OpTimeout time.Duration
	// HealBound is how long the cluster may take, after a fault is
	// healed, to be back to full redundancy: every node a serving member
	// of one epoch, recovery finished everywhere.
	HealBound time.Duration
	Net       string       // network fault mechanism: NetAuto (default), NetNFT or NetProxy
	Keep      bool         // keep the run directory even when the run passed
	Log       *slog.Logger // progress (default: discard)
}

// Heal is how long one fault took to heal.
type Heal struct {
	Kind string
	What string
	Took time.Duration // from the heal until full redundancy
	Err  string        `json:",omitempty"`
}

// Report is the outcome of a run.
type Report struct {
	Seed      uint64
	Schedule  Schedule
	Mechanism string // how network faults were made
	Heals     []Heal
	Problems  []string // everything the checks found; empty means the run passed
	Workload  string
	Check     string // the linearizability verdict
	Dir       string // the run directory (kept when the run failed)
	Wall      time.Duration
}

// OK reports whether the run found nothing wrong.
func (r Report) OK() bool { return len(r.Problems) == 0 }

// Counts returns the number of faults per kind.
func (r Report) Counts() map[string]int {
	out := map[string]int{}
	for _, h := range r.Heals {
		out[h.Kind]++
	}
	return out
}

// Line is the one-line summary the CLI prints per run.
func (r Report) Line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed=%d nodes=%d copies=%d clients=%d mechanism=%s", r.Seed, r.Schedule.Nodes, r.Schedule.Copies, r.Schedule.Clients, r.Mechanism)
	counts := r.Counts()
	kinds := make([]string, 0, len(counts))
	for k := range counts {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	b.WriteString(" faults=")
	for i, k := range kinds {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "%s:%d", k, counts[k])
	}
	b.WriteString(" healed=")
	for i, h := range r.Heals {
		if i > 0 {
			b.WriteString(",")
		}
		if h.Err != "" {
			fmt.Fprintf(&b, "%s:NEVER", h.Kind)
		} else {
			fmt.Fprintf(&b, "%s:%.1fs", h.Kind, h.Took.Seconds())
		}
	}
	fmt.Fprintf(&b, " %s wall=%.0fs", r.Workload, r.Wall.Seconds())
	if r.OK() {
		b.WriteString(" verdict=ok")
	} else {
		fmt.Fprintf(&b, " verdict=FAIL (%d problems; kept in %s)", len(r.Problems), r.Dir)
	}
	return b.String()
}

func (c *Config) defaults() {
	if c.Faults <= 0 {
		c.Faults = 4
	}
	if c.Tick <= 0 {
		c.Tick = 10 * time.Millisecond
	}
	if c.Workers <= 0 {
		c.Workers = 3
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 5 * time.Second
	}
	if c.HealBound <= 0 {
		c.HealBound = 60 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Out == "" {
		c.Out = filepath.Join(os.TempDir(), "sdfaults-out")
	}
}

// Run runs one seed: a cluster in a private network namespace, clients
// writing and reading through NBD while the schedule's faults come and go,
// then the checks. The error is for a harness that could not run (no
// namespace, no binary); what the checks found is in Report.Problems.
// The namespace and every mount are removed before Run returns, also on
// SIGINT or SIGTERM.
func Run(ctx context.Context, cfg Config) (rep Report, err error) {
	cfg.defaults()
	start := time.Now()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	sched := NewSchedule(cfg.Seed, cfg.Nodes, cfg.Faults, cfg.Kinds, cfg.Tick)
	rep = Report{Seed: cfg.Seed, Schedule: sched}
	defer func() { rep.Wall = time.Since(start) }()

	if cfg.Bin == "" {
		return rep, errors.New("faults: Config.Bin (the sheepdog binary) is required")
	}
	if err := EnsureTools(ctx, cfg.Log); err != nil {
		return rep, err
	}
	CleanStale(ctx, cfg.Log)

	// A replay does not overwrite the directory of the run it replays.
	dir := filepath.Join(cfg.Out, fmt.Sprintf("seed-%d-%s", cfg.Seed, start.Format("20060102-150405")))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return rep, fmt.Errorf("faults: %w", err)
	}
	rep.Dir = dir
	events, err := os.Create(filepath.Join(dir, "events.log"))
	if err != nil {
		return rep, fmt.Errorf("faults: %w", err)
	}
	defer events.Close()
	log := slog.New(teeHandler{cfg.Log.Handler(), slog.NewTextHandler(events, &slog.HandlerOptions{Level: slog.LevelDebug})}).With("seed", cfg.Seed)
	log.Info("run", "schedule", sched.String(), "plant", cfg.Plant)

	ns, err := NewNamespace(ctx, log)
	if err != nil {
		return rep, err
	}
	defer func() {
		if cerr := ns.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	fw, err := NewFirewall(ctx, ns, cfg.Net, log)
	if err != nil {
		return rep, err
	}
	proxy, _ := fw.(*Proxy)
	if proxy != nil {
		defer proxy.Close()
	}
	rep.Mechanism = fw.Mechanism()
	log.Info("network faults", "mechanism", rep.Mechanism, "ns", ns.Name)

	// Registered before the cluster's shutdown, so it runs after it: the
	// node logs are complete when the directory is kept or removed.
	defer func() {
		rep.Wall = time.Since(start)
		if werr := writeArtifacts(dir, cfg, &rep); werr != nil {
			err = errors.Join(err, werr)
		}
		if rep.OK() && err == nil && !cfg.Keep {
			_ = os.RemoveAll(dir)
			rep.Dir = ""
		}
	}()
	mounts, err := os.MkdirTemp("", fmt.Sprintf("%s%d-mnt-", nsPrefix, os.Getpid()))
	if err != nil {
		return rep, fmt.Errorf("faults: %w", err)
	}
	defer os.RemoveAll(mounts)
	c := newCluster(ns, cfg.Bin, dir, mounts, cfg.Tick, cfg.Plant, log)
	c.proxy = proxy
	defer func() { c.shutdown(len(rep.Problems) > 0) }()

	problem := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		log.Error("problem", "what", msg)
		rep.Problems = append(rep.Problems, msg)
	}

	if err := bootstrap(ctx, c, sched, cfg); err != nil {
		problem("cluster did not start: %v", err)
		rep.Problems = append(rep.Problems, c.surprised()...)
		return rep, nil
	}

	w := &workload{c: c, rec: newRecorder(), opTimeout: cfg.OpTimeout, log: log, seed: cfg.Seed}
	for i := range sched.Clients {
		w.clients = append(w.clients, &client{id: i, vdi: fmt.Sprintf("c%d", i), src: fmt.Sprintf("127.0.1.%d", i+1), w: w, pick: i})
	}
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() { w.run(wctx, cfg.Workers); close(wdone) }()
	stopWorkload := func() {
		wcancel()
		<-wdone
	}
	defer stopWorkload()

	m := &nemesis{c: c, fw: fw, w: w}
	_ = wait(ctx, time.Second)
	for i, f := range sched.Faults {
		if ctx.Err() != nil {
			break
		}
		if err := wait(ctx, f.Gap); err != nil {
			break
		}
		log.Info("fault", "n", i, "fault", f.String())
		what, ierr := m.inject(ctx, f)
		h := Heal{Kind: f.Kind, What: what}
		if ierr != nil {
			problem("fault %d %s (%s): %v", i, f.Kind, what, ierr)
		}
		took, herr := c.waitHealthy(ctx, cfg.HealBound)
		h.Took = took
		if herr != nil {
			h.Err = herr.Error()
			problem("fault %d %s (%s): %v", i, f.Kind, what, herr)
		}
		log.Info("healed", "n", i, "kind", f.Kind, "what", what, "took", took, "err", h.Err)
		rep.Heals = append(rep.Heals, h)
		if herr != nil {
			break
		}
	}
	_ = wait(ctx, time.Second)
	stopWorkload()
	if ctx.Err() != nil {
		return rep, fmt.Errorf("faults: run interrupted: %w", ctx.Err())
	}

	// After the faults: full redundancy, the final reads, the checks.
	if _, err := c.waitHealthy(ctx, cfg.HealBound); err != nil {
		problem("after the faults: %v", err)
	}
	got, fproblems := w.final(ctx)
	for _, p := range fproblems {
		problem("%s", p)
	}
	for _, p := range w.checkDurable(got) {
		problem("%s", p)
	}
	w.rec.mu.Lock()
	for _, t := range w.rec.torn {
		problem("torn read: %s", t)
	}
	res := linearizability.Check(w.rec.h, time.Minute)
	w.rec.mu.Unlock()
	rep.Check = res.String()
	if !res.OK {
		problem("%s", res.String())
	}
	if err := res.WriteHTML(filepath.Join(dir, "linearizability.html")); err != nil {
		log.Warn("visualisation", "err", err)
	}
	for _, cl := range w.clients {
		for _, p := range checkVDI(ctx, c, cl.vdi, sched.Copies) {
			problem("%s", p)
		}
	}
	for _, s := range c.surprised() {
		problem("%s", s)
	}
	rep.Workload = w.summary()
	w.rec.mu.Lock()
	ops := slices.Clone(w.rec.ops)
	w.rec.mu.Unlock()
	if err := writeJSON(filepath.Join(dir, "history.json"), ops); err != nil {
		log.Warn("history", "err", err)
	}
	log.Info("verdict", "ok", rep.OK(), "problems", len(rep.Problems), "workload", rep.Workload, "check", rep.Check)
	if !rep.OK() {
		// Every node's goroutines into its log: a node that stopped
		// answering shows where it waits.
		c.dumpStacks()
	}
	return rep, nil
}

// bootstrap starts the nodes, formats the cluster and creates the VDIs.
func bootstrap(ctx context.Context, c *cluster, s Schedule, cfg Config) error {
	for i := range s.Nodes {
		n, err := c.addNode(ctx, i)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.nodes = append(c.nodes, n)
		c.mu.Unlock()
	}
	nodes := c.members()
	if err := c.start(nodes[0], true); err != nil {
		return err
	}
	if err := poll(ctx, 30*time.Second, func() error {
		_, err := c.statuses(ctx, nodes[0])
		return err
	}); err != nil {
		return fmt.Errorf("first node: %w", err)
	}
	for _, n := range nodes[1:] {
		if err := c.start(n, false); err != nil {
			return err
		}
	}
	if err := poll(ctx, 60*time.Second, func() error {
		rows, err := c.statuses(ctx, nodes[0])
		if err == nil && len(rows) != len(nodes) {
			err = fmt.Errorf("%d of %d members", len(rows), len(nodes))
		}
		return err
	}); err != nil {
		return fmt.Errorf("members: %w", err)
	}
	if _, err := c.admin(ctx, nodes[0].listen(), "cluster", "format", "--copies", fmt.Sprint(s.Copies)); err != nil {
		return err
	}
	for i := range s.Clients {
		if err := poll(ctx, 30*time.Second, func() error {
			_, err := c.admin(ctx, nodes[0].listen(), "vdi", "create", fmt.Sprintf("c%d", i), "16M")
			if err != nil && strings.Contains(err.Error(), "exists") {
				return nil
			}
			return err
		}); err != nil {
			return err
		}
	}
	_, err := c.waitHealthy(ctx, cfg.HealBound)
	return err
}

// poll calls f until it succeeds or timeout passes.
func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		if werr := wait(ctx, 200*time.Millisecond); werr != nil {
			return werr
		}
	}
}

// checkVDI runs `vdi check` and requires every object to have all its
// replicas, identical; a repair it made (corruption the faults planted)
// must stick: a second check repairs nothing.
func checkVDI(ctx context.Context, c *cluster, name string, copies int) []string {
	var problems []string
	for pass := 1; pass <= 2; pass++ {
		var cr daemon.CheckReport
		var err error
		for _, n := range c.members()[:2] {
			if cr, err = adminJSON[daemon.CheckReport](ctx, c, n.listen(), "vdi", "check", name); err == nil {
				break
			}
		}
		switch {
		case err != nil:
			return append(problems, fmt.Sprintf("vdi check %s: %v", name, err))
		case cr.Copies != copies || cr.Replicated != cr.Allocated || len(cr.Problems) > 0:
			return append(problems, fmt.Sprintf("vdi check %s (pass %d): %d of %d objects with %d identical replicas (want %d copies): %v",
				name, pass, cr.Replicated, cr.Allocated, cr.Copies, copies, cr.Problems))
		case pass == 2 && cr.Repaired > 0:
			return append(problems, fmt.Sprintf("vdi check %s repaired %d replicas again on a second pass", name, cr.Repaired))
		case cr.Repaired == 0:
			return problems
		}
	}
	return problems
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return fmt.Errorf("faults: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("faults: %w", err)
	}
	return nil
}

// writeArtifacts writes the seed, the schedule and the report into the
// run directory.
func writeArtifacts(dir string, cfg Config, rep *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d\n", cfg.Seed)
	fmt.Fprintf(&b, "replay: sheepdog faults --seed %d --runs 1 --faults %d --kinds %s", cfg.Seed, cfg.Faults, strings.Join(cfg.Kinds, ","))
	if cfg.Nodes > 0 {
		fmt.Fprintf(&b, " --nodes %d", cfg.Nodes)
	}
	if cfg.Plant != "" {
		fmt.Fprintf(&b, " --plant %s", cfg.Plant)
	}
	fmt.Fprintf(&b, " --tick %v\n\n%s\n\n%s\n", cfg.Tick, rep.Schedule.String(), rep.Line())
	for _, h := range rep.Heals {
		fmt.Fprintf(&b, "fault %s: %s; healed in %v %s\n", h.Kind, h.What, h.Took.Round(time.Millisecond), h.Err)
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(&b, "PROBLEM: %s\n", p)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.txt"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("faults: %w", err)
	}
	return nil
}

// teeHandler sends every record to two handlers.
type teeHandler struct{ a, b slog.Handler }

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return t.a.Enabled(ctx, l) || t.b.Enabled(ctx, l)
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if t.a.Enabled(ctx, r.Level) {
		err = t.a.Handle(ctx, r.Clone())
	}
	if t.b.Enabled(ctx, r.Level) {
		err = errors.Join(err, t.b.Handle(ctx, r))
	}
	return err
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{t.a.WithAttrs(as), t.b.WithAttrs(as)}
}

func (t teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{t.a.WithGroup(name), t.b.WithGroup(name)}
}
