package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// The CLI jobs: `sheepdog vdi write` and `sheepdog vdi read` of a random
// image (--cli-size, 256 MiB by default) on a fresh 3-node copies=3
// cluster of their own, each against `qemu-img convert` into and out of
// the same cluster (through the same node's NBD port) in the same round,
// medians of --runs rounds whose order alternates. Every write goes to a
// new thin VDI (an import, as a user does it); both reads read the VDI
// the CLI wrote, and the CLI's copy is compared with the image. Then the
// idle check: after a sync and a pause, the sheep processes' CPU use over
// idleCheckWindow (from /proc/PID/stat) and resident memory (VmRSS from
// /proc/PID/status), against the issue's ≤ 3% of a core for the idle
// cluster and each node within its --memory budget. Then, unless
// --no-recovery, the recovery job twice (recovery.go: idle, then under a
// client's load), and the vdi check job (vdicheck.go), each followed by an
// idle check.

const (
	// memoryBudget is a sheep's default --memory, which the bench's nodes
	// run with.
	memoryBudget    = 256 << 20
	idleCheckPause  = 5 * time.Second
	idleCheckWindow = 5 * time.Second
	idleCheckCPU    = 3.0 // percent of one CPU, the whole cluster
)

// cliRun is one round of the CLI jobs, in MiB/s.
type cliRun struct {
	VDIWrite float64 `json:"vdi_write_mib_s"`
	QemuIn   float64 `json:"qemu_img_in_mib_s"`
	VDIRead  float64 `json:"vdi_read_mib_s"`
	QemuOut  float64 `json:"qemu_img_out_mib_s"`
}

// nodeUse is one sheep process at rest.
type nodeUse struct {
	Node       string  `json:"node"`
	CPUPercent float64 `json:"cpu_percent"` // of one CPU
	RSS        int64   `json:"rss_bytes"`
}

type cliReport struct {
	ImageBytes        int64           `json:"image_bytes"`
	Commands          []string        `json:"commands"`
	Runs              []cliRun        `json:"runs"`
	Median            cliRun          `json:"median"`
	WriteRatio        float64         `json:"vdi_write_vs_qemu_img_in"`
	ReadRatio         float64         `json:"vdi_read_vs_qemu_img_out"`
	IdleBefore        []nodeUse       `json:"idle_before"` // the fresh cluster
	IdleAfter         []nodeUse       `json:"idle_after"`  // after the CLI jobs
	Recovery          *recoveryReport `json:"recovery,omitempty"`
	IdleAfterRecovery []nodeUse       `json:"idle_after_recovery,omitempty"`
	Load              *loadReport     `json:"recovery_load,omitempty"`
	Check             *checkReport    `json:"vdi_check,omitempty"`
	IdleAfterCheck    []nodeUse       `json:"idle_after_check,omitempty"`
	Checks            []check         `json:"checks"`
	Failed            []string        `json:"failed_attempts,omitempty"` // rounds done again, and why
}

// cliAttempts bounds the attempts at one round.
const cliAttempts = 3

// clusterHealthy waits (up to a minute) until the n members at addr are
// in one epoch, serving, and done recovering it.
func clusterHealthy(ctx context.Context, bin, addr string, n int) error {
	var last error
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		out, err := admin(ctx, bin, "node", "recovery", "-a", addr, "--json")
		var rows []struct {
			Epoch   uint32 `json:"epoch"`
			Serving bool   `json:"serving"`
			AllDone bool   `json:"recovery_all_done"`
			Dir     string `json:"dir"`
		}
		if err == nil {
			err = json.Unmarshal(out, &rows)
		}
		if err == nil {
			ok := len(rows) == n
			for _, r := range rows {
				ok = ok && r.Serving && r.AllDone && r.Epoch == rows[0].Epoch && !strings.HasPrefix(r.Dir, "unreachable")
			}
			if ok {
				return nil
			}
			err = fmt.Errorf("node recovery: %s", bytes.TrimSpace(out))
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("the cli cluster is not healthy after a minute: %w", last)
}

func (b *bench) cliJobs() (*cliReport, error) {
	ctx := b.sup.ctx
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return nil, fmt.Errorf("qemu-img not found (`make deps` installs qemu-utils): %w", err)
	}
	size := b.cfg.cliSize
	fmt.Printf("CLI jobs: vdi write and vdi read of %s against qemu-img convert, on a fresh 3-node copies=3 cluster ...\n", formatSize(size))
	t, err := startCluster(b.sup, b.cfg, b.cfg.bin, "cli", 3, 3, false, filepath.Join(b.work, "cli"), filepath.Join(b.work, "logs"))
	if err != nil {
		return nil, fmt.Errorf("cli cluster: %w", err)
	}
	defer func() {
		for _, p := range t.procs {
			p.stop(b.sup.hurry)
		}
	}()
	procs := t.procs
	img, err := b.image()
	if err != nil {
		return nil, err
	}
	idle := calibrateIdle(ctx, procs)
	rep := &cliReport{ImageBytes: size}
	if rep.IdleBefore, err = idleUse(ctx, procs, idleCheckWindow); err != nil {
		return nil, err
	}
	nbdBase := strings.TrimSuffix(t.URI, "/bench")
	out := filepath.Join(b.work, "cli", "out.raw")
	mibs := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	timed := func(argv ...string) (time.Duration, error) {
		_, total, ok := settle(ctx, procs, idle)
		if !ok {
			fmt.Printf("    (still busy after settling %.1fs)\n", total.Seconds())
		}
		t0 := time.Now()
		_, errOut, err := command(ctx, argv...)
		el := time.Since(t0)
		if err != nil {
			return 0, fmt.Errorf("`%s`: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(errOut))
		}
		return el, nil
	}
	// round runs the four jobs of round r (attempt a) on fresh VDIs.
	round := func(r, a int) (cliRun, error) {
		var run cliRun
		if err := clusterHealthy(ctx, t.bin, t.admin, len(procs)); err != nil {
			return run, err
		}
		cliVDI, qemuVDI := fmt.Sprintf("cli-w%d.%d", r+1, a), fmt.Sprintf("qemu-w%d.%d", r+1, a)
		for _, v := range []string{cliVDI, qemuVDI} {
			if _, err := admin(ctx, t.bin, "vdi", "create", "-a", t.admin, v, formatSize(size)); err != nil {
				return run, err
			}
		}
		type job struct {
			name string
			argv []string
			res  *float64
		}
		writes := []job{
			{"vdi write", []string{t.bin, "vdi", "write", cliVDI, "--file", img, "-a", t.admin}, &run.VDIWrite},
			{"qemu-img in", []string{"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", img, nbdBase + "/" + qemuVDI}, &run.QemuIn},
		}
		reads := []job{
			{"vdi read", []string{t.bin, "vdi", "read", cliVDI, "--out", out, "-a", t.admin}, &run.VDIRead},
			{"qemu-img out", []string{"qemu-img", "convert", "-f", "raw", "-O", "raw", nbdBase + "/" + cliVDI, out}, &run.QemuOut},
		}
		if r == 0 && a == 1 {
			for _, j := range append(writes, reads...) {
				rep.Commands = append(rep.Commands, strings.Join(j.argv, " "))
			}
		}
		for _, js := range [][]job{writes, reads} {
			if r%2 == 1 {
				js = []job{js[1], js[0]}
			}
			for _, j := range js {
				el, err := timed(j.argv...)
				if err != nil {
					return run, err
				}
				*j.res = mibs(el)
				fmt.Printf("  run %d/%d  %-13s %7.1f MiB/s  (%.2fs)\n", r+1, b.cfg.runs, j.name, *j.res, el.Seconds())
				if j.name == "vdi read" {
					if err := sameFiles(img, out); err != nil {
						return run, fmt.Errorf("vdi read %s: %w", cliVDI, err)
					}
				}
				os.Remove(out)
			}
		}
		return run, nil
	}
	var checkVDI string // the first VDI the CLI wrote
	for r := 0; r < b.cfg.runs; r++ {
		for a := 1; ; a++ {
			run, err := round(r, a)
			if err == nil {
				rep.Runs = append(rep.Runs, run)
				if checkVDI == "" {
					checkVDI = fmt.Sprintf("cli-w%d.%d", r+1, a)
				}
				break
			}
			if ctx.Err() != nil || a == cliAttempts {
				return nil, err
			}
			// A shared machine can starve a node until the others
			// declare it dead: the epoch changes and client I/O fails
			// meanwhile, for qemu-img as for the CLI. Such a round is
			// reported and done again on new VDIs.
			fmt.Printf("  run %d/%d failed (%v): the round is done again once the cluster is healthy\n", r+1, b.cfg.runs, err)
			rep.Failed = append(rep.Failed, fmt.Sprintf("run %d attempt %d: %v", r+1, a, err))
		}
	}
	pick := func(f func(cliRun) float64) float64 {
		var v []float64
		for _, r := range rep.Runs {
			v = append(v, f(r))
		}
		return median(v)
	}
	rep.Median = cliRun{
		VDIWrite: pick(func(r cliRun) float64 { return r.VDIWrite }),
		QemuIn:   pick(func(r cliRun) float64 { return r.QemuIn }),
		VDIRead:  pick(func(r cliRun) float64 { return r.VDIRead }),
		QemuOut:  pick(func(r cliRun) float64 { return r.QemuOut }),
	}
	rep.WriteRatio = ratio(rep.Median.VDIWrite, rep.Median.QemuIn)
	rep.ReadRatio = ratio(rep.Median.VDIRead, rep.Median.QemuOut)

	fmt.Printf("idle check: sync, %s pause, then CPU and RSS of the sheep processes over %s ...\n", idleCheckPause, idleCheckWindow)
	syscall.Sync()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(idleCheckPause):
	}
	if rep.IdleAfter, err = idleUse(ctx, procs, idleCheckWindow); err != nil {
		return nil, err
	}

	if !b.cfg.noRecovery {
		if rep.Recovery, err = b.recovery(t, idle, nil); err != nil {
			return nil, fmt.Errorf("recovery job: %w", err)
		}
		if rep.IdleAfterRecovery, err = idleAfter(ctx, procs); err != nil {
			return nil, err
		}
		if rep.Load, err = b.loadedRecovery(t, idle); err != nil {
			return nil, fmt.Errorf("recovery under load: %w", err)
		}
	}
	if rep.Check, err = b.vdiCheck(t, idle, checkVDI); err != nil {
		return nil, fmt.Errorf("vdi check job: %w", err)
	}
	if rep.IdleAfterCheck, err = idleAfter(ctx, procs); err != nil {
		return nil, err
	}

	mib := float64(1 << 20)
	abs := func(job, goal, metric string, value, threshold float64, atMost bool) check {
		return check{Goal: goal, Issue: "#13", Target: "cli", Job: job, Metric: metric, AtMost: atMost,
			Threshold: threshold, Value: value, Ratio: value, Absolute: true}
	}
	vs := func(job, goal string, value, base float64) check {
		return check{Goal: goal, Issue: "#13", Target: "cli", Job: job, Metric: "bw", Threshold: 0.8,
			Value: value * mib, Baseline: base * mib, Ratio: ratio(value, base), Against: "qemu-img convert, same cluster"}
	}
	var cpu float64
	var rss int64
	for _, u := range rep.IdleAfter {
		cpu += u.CPUPercent
	}
	for _, us := range [][]nodeUse{rep.IdleAfter, rep.IdleAfterRecovery, rep.IdleAfterCheck} {
		for _, u := range us {
			rss = max(rss, u.RSS)
		}
	}
	rep.Checks = []check{
		vs("cli-vdi-write", "cli vdi write --file >= 0.80x qemu-img convert into the same cluster", rep.Median.VDIWrite, rep.Median.QemuIn),
		vs("cli-vdi-read", "cli vdi read --out >= 0.80x qemu-img convert out of the same cluster", rep.Median.VDIRead, rep.Median.QemuOut),
		// Twice the original Sheepdog's CLI on the issue's machine.
		abs("cli-vdi-write", "cli vdi write --file > 95 MiB/s (2x the original's)", "mibs", rep.Median.VDIWrite, 95, false),
		abs("cli-vdi-read", "cli vdi read --out > 330 MiB/s (2x the original's)", "mibs", rep.Median.VDIRead, 330, false),
		abs("cli-idle", fmt.Sprintf("cli cluster idle after the CLI jobs <= %.0f%% of a core", idleCheckCPU), "cpu_percent", cpu, idleCheckCPU, true),
		abs("cli-idle", fmt.Sprintf("cli cluster's largest node RSS after any job <= --memory (%s)", formatSize(memoryBudget)), "rss_mib", float64(rss)/mib, memoryBudget/mib, true),
	}
	if r := rep.Recovery; r != nil {
		var cpu float64
		for _, u := range rep.IdleAfterRecovery {
			cpu += u.CPUPercent
		}
		rep.Checks = append(rep.Checks, r.checks()...)
		rep.Checks = append(rep.Checks, abs("cli-idle", fmt.Sprintf("cli cluster idle after the recovery <= %.0f%% of a core", idleCheckCPU), "cpu_percent", cpu, idleCheckCPU, true))
	}
	if r := rep.Load; r != nil {
		rep.Checks = append(rep.Checks, r.checks()...)
	}
	if r := rep.Check; r != nil {
		var cpu float64
		for _, u := range rep.IdleAfterCheck {
			cpu += u.CPUPercent
		}
		rep.Checks = append(rep.Checks, r.checks(size)...)
		rep.Checks = append(rep.Checks, abs("cli-idle", fmt.Sprintf("cli cluster idle after vdi check <= %.0f%% of a core", idleCheckCPU), "cpu_percent", cpu, idleCheckCPU, true))
	}
	for i := range rep.Checks {
		rep.Checks[i].judge()
	}
	return rep, nil
}

// idleAfter is the idle check after a job: a sync, a pause, then the
// processes' use over idleCheckWindow.
func idleAfter(ctx context.Context, procs []*proc) ([]nodeUse, error) {
	syscall.Sync()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(idleCheckPause):
	}
	return idleUse(ctx, procs, idleCheckWindow)
}

// cliChecks returns cli's checks, the two ratios with their value against
// qemu-img convert into and out of qemu-nbd as well (from the fresh phase
// of the same run, same image size).
func (b *bench) cliChecks(r *report, cli *cliReport) []check {
	out := append([]check(nil), cli.Checks...)
	ref := map[string]string{"cli-vdi-write": "import-qemu-img", "cli-vdi-read": "export-qemu-img"}
	for i, c := range out {
		if id := ref[c.Job]; id != "" && !c.Absolute {
			out[i].VsQemuNBD = ratio(c.Value, r.find(id, "baseline").Median.BW)
		}
	}
	return out
}

// randomImage writes size random bytes to path.
func randomImage(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	rng := rand.NewChaCha8([32]byte{'s', 'h', 'e', 'e', 'p'})
	buf := make([]byte, 4<<20)
	for n := int64(0); n < size; {
		k := min(int64(len(buf)), size-n)
		_, _ = rng.Read(buf[:k])
		if _, err := f.Write(buf[:k]); err != nil {
			f.Close()
			return err
		}
		n += k
	}
	return f.Close()
}

// sameFiles fails unless a and b have the same contents.
func sameFiles(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(ba)) {
		na, ea := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return fmt.Errorf("the copy differs from the image in the MiB at offset %d", off)
		}
		if ea != nil {
			return nil
		}
	}
}

// idleUse measures each process's CPU use over window and its resident
// memory at the end.
func idleUse(ctx context.Context, procs []*proc, window time.Duration) ([]nodeUse, error) {
	before := make([]int64, len(procs))
	for i, p := range procs {
		before[i] = cpuTicks([]*proc{p})
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(window):
	}
	el := time.Since(t0)
	var out []nodeUse
	for i, p := range procs {
		if p.exited() {
			return nil, fmt.Errorf("%s exited: %v (log: %s)", p.name, p.err, p.logPath)
		}
		ticks := cpuTicks([]*proc{p}) - before[i]
		out = append(out, nodeUse{Node: p.name, CPUPercent: float64(ticks) / 100 / el.Seconds() * 100, RSS: rssOf(p)})
	}
	return out, nil
}

// rssOf is a process's VmRSS in bytes (0 if unknown).
func rssOf(p *proc) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

func printCLI(w io.Writer, r *cliReport) {
	if r == nil {
		return
	}
	fmt.Fprintf(w, "\nCLI jobs: %s image, fresh 3-node copies=3 cluster, medians of %d round(s) (MiB/s):\n", formatSize(r.ImageBytes), len(r.Runs))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tvdi write\tqemu-img in\tratio\tvdi read\tqemu-img out\tratio\t")
	for i, run := range r.Runs {
		fmt.Fprintf(tw, "run %d\t%.1f\t%.1f\t%.2fx\t%.1f\t%.1f\t%.2fx\t\n", i+1, run.VDIWrite, run.QemuIn, ratio(run.VDIWrite, run.QemuIn),
			run.VDIRead, run.QemuOut, ratio(run.VDIRead, run.QemuOut))
	}
	m := r.Median
	fmt.Fprintf(tw, "median\t%.1f\t%.1f\t%.2fx\t%.1f\t%.1f\t%.2fx\t\n", m.VDIWrite, m.QemuIn, r.WriteRatio, m.VDIRead, m.QemuOut, r.ReadRatio)
	tw.Flush()
	fmt.Fprintln(w, "  commands:")
	for _, c := range r.Commands {
		fmt.Fprintln(w, "    "+c)
	}
	fmt.Fprintln(w, "Idle sheep processes (CPU over 5 s, % of one CPU; resident memory):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "node\tCPU fresh\tRSS fresh\tCPU after CLI jobs\tRSS after CLI jobs\tCPU after recovery\tRSS after recovery\tCPU after check\tRSS after check\t")
	at := func(us []nodeUse, i int) nodeUse {
		if i < len(us) {
			return us[i]
		}
		return nodeUse{}
	}
	for i, a := range r.IdleAfter {
		fmt.Fprintf(tw, "%s\t", a.Node)
		for _, u := range []nodeUse{at(r.IdleBefore, i), a, at(r.IdleAfterRecovery, i), at(r.IdleAfterCheck, i)} {
			fmt.Fprintf(tw, "%.1f%%\t%.0f MiB\t", u.CPUPercent, float64(u.RSS)/(1<<20))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	if rc := r.Recovery; rc != nil {
		fmt.Fprintf(w, "Recovery of %s wiped: %s refilled in %.2fs (%s/s; it stored %s before); cp -r of its objects and sync: %s in %.2fs (%s/s)\n",
			rc.Node, fmtBytes(float64(rc.BytesAfter)), rc.Seconds, fmtBytes(float64(rc.BytesAfter)/rc.Seconds), fmtBytes(float64(rc.BytesBefore)),
			fmtBytes(float64(rc.CopyBytes)), rc.CopySeconds, fmtBytes(float64(rc.CopyBytes)/rc.CopySeconds))
	}
	if l := r.Load; l != nil {
		fmt.Fprintf(w, "Recovery under load: refilled in %.2fs; client 4K randwrite QD1 %.0f IOPS during it, %.0f before (%.2fx)\n",
			l.Seconds, median(l.IOPSDuring), median(l.IOPSBefore), ratio(median(l.IOPSDuring), median(l.IOPSBefore)))
	}
	if c := r.Check; c != nil {
		fmt.Fprintf(w, "vdi check %s: median %.2fs of %d, slowest %.2fs\n", c.VDI, median(c.Seconds), len(c.Seconds), slices.Max(c.Seconds))
	}
	for _, f := range r.Failed {
		fmt.Fprintln(w, "  done again: "+f)
	}
}

// runCLIOnly is the whole run with --cli-only: the CLI jobs, their
// report (and JSON), nothing else.
func (b *bench) runCLIOnly(fail func(error) int) int {
	cli, err := b.cliJobs()
	if err != nil {
		return fail(err)
	}
	b.machine.LoadAvgEnd = loadAvg()
	printCLI(os.Stdout, cli)
	rep := &report{Started: b.start.UTC().Format(time.RFC3339), Seconds: time.Since(b.start).Seconds(), Machine: b.machine, CLI: cli, Checks: cli.Checks}
	rep.Settings.Runs = b.cfg.runs
	for _, c := range rep.Checks {
		rep.Goals++
		if c.Pass {
			rep.Passed++
		}
	}
	printSummary(os.Stdout, rep)
	fmt.Printf("load average %s at start, %s at end; total time %s\n", b.machine.LoadAvgStart, b.machine.LoadAvgEnd, time.Since(b.start).Round(time.Second))
	if b.cfg.jsonPath != "" {
		if err := writeJSON(b.cfg.jsonPath, rep); err != nil {
			return fail(err)
		}
		fmt.Printf("JSON results written to %s\n", b.cfg.jsonPath)
	}
	return 0
}
