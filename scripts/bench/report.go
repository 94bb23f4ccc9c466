package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// machineInfo describes where the numbers come from.
type machineInfo struct {
	Hostname     string `json:"hostname"`
	NProc        int    `json:"nproc"`
	CPUModel     string `json:"cpu_model"`
	Memory       string `json:"memory"`
	Kernel       string `json:"kernel"`
	Harness      string `json:"harness_go"`
	Fio          string `json:"fio"`
	QemuNBD      string `json:"qemu_nbd"`
	Bin          string `json:"bin"`
	BinModTime   string `json:"bin_mtime"`
	GitCommit    string `json:"git_commit,omitempty"`
	WorkDir      string `json:"work_dir"`
	WorkFS       string `json:"work_fs"`
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
}

// checkTools fails early, with a hint, when something is missing.
func checkTools(cfg *config) error {
	for _, bin := range []string{cfg.bin, cfg.compare} {
		if bin == "" {
			continue
		}
		st, err := os.Stat(bin)
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("sheepdog binary %s not found or not executable: run `make build` first (or pass --bin)", bin)
		}
	}
	for _, t := range []string{cfg.fio, cfg.qemuNBD} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found (`make deps` installs fio and qemu-utils): %w", t, err)
		}
	}
	out, _, err := command(context.Background(), cfg.fio, "--enghelp")
	if err == nil && !strings.Contains(string(out), "nbd") {
		return fmt.Errorf("%s has no nbd ioengine (fio --enghelp does not list it)", cfg.fio)
	}
	return nil
}

func describeMachine(cfg *config, work string) machineInfo {
	m := machineInfo{
		NProc:        runtime.NumCPU(),
		Harness:      runtime.Version(),
		Bin:          cfg.bin,
		WorkDir:      work,
		WorkFS:       fsInfo(work),
		LoadAvgStart: loadAvg(),
	}
	m.Hostname, _ = os.Hostname()
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if kb := procField("/proc/meminfo", "MemTotal"); kb != "" {
		var n int64
		fmt.Sscanf(kb, "%d", &n)
		m.Memory = fmt.Sprintf("%.1f GiB RAM", float64(n)/(1<<20))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = runtime.GOOS + " " + strings.TrimSpace(string(b))
	}
	m.Fio = firstLine(cfg.fio, "--version")
	m.QemuNBD = firstLine(cfg.qemuNBD, "--version")
	if st, err := os.Stat(cfg.bin); err == nil {
		m.BinModTime = st.ModTime().Format("2006-01-02 15:04:05")
	}
	if c := firstLine("git", "rev-parse", "--short", "HEAD"); c != "" {
		m.GitCommit = c
		if out, _, err := command(context.Background(), "git", "status", "--porcelain", "--untracked-files=no"); err == nil && len(out) > 0 {
			m.GitCommit += " + uncommitted changes"
		}
	}
	return m
}

// firstLine runs a command and returns the first line of its output, or
// "" if it fails.
func firstLine(argv ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _, err := command(ctx, argv...)
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func (b *bench) printHeader() {
	m, c := b.machine, b.cfg
	fmt.Printf("sheepdog benchmark, %s\n", b.start.UTC().Format("2006-01-02 15:04:05 UTC"))
	fmt.Printf("  machine  : %d CPUs (nproc), %s, %s, %s, host %s\n", m.NProc, orQ(m.CPUModel), orQ(m.Memory), orQ(m.Kernel), m.Hostname)
	fmt.Printf("  load avg : %s at start (1/5/15 min; the machine is shared, hence ratios and medians)\n", m.LoadAvgStart)
	commit := ""
	if m.GitCommit != "" {
		commit = ", repo at " + m.GitCommit
	}
	fmt.Printf("  binary   : %s (modified %s%s)\n", m.Bin, m.BinModTime, commit)
	if c.compare != "" {
		fmt.Printf("  compare  : %s (targets 3-node-cmp, 1-node-cmp; the issue targets are checked on --bin)\n", c.compare)
	}
	fmt.Printf("  tools    : %s; %s; harness %s\n", orQ(m.Fio), orQ(m.QemuNBD), m.Harness)
	keep := "removed at the end (--keep keeps it)"
	if c.keep {
		keep = "kept"
	}
	fmt.Printf("  work dir : %s (%s), %s\n", m.WorkDir, m.WorkFS, keep)
	fmt.Printf("  fio      : ioengine=nbd (libnbd, one connection), %s working set from offset 0 of a %s device,\n", formatSize(c.workingSet), formatSize(c.size))
	fmt.Printf("             %s ramp + %s measured per run, %d run(s) per job and target, target order rotated each round,\n", c.ramp, c.runtime, c.runs)
	fmt.Printf("             sync(2) and wait for idle targets before every run; latencies are fio completion latency (clat)\n")
}

func orQ(s string) string {
	if s == "" {
		return "?"
	}
	return s
}

func (b *bench) printTargets() {
	fmt.Println("targets (all on 127.0.0.1, data in the work dir):")
	for _, t := range b.targets {
		fmt.Printf("  %-8s %s\n           %s\n", t.Name, t.URI, t.Settings)
	}
	fmt.Println("  baseline settings: writeback caching acknowledges writes from the host page cache and makes")
	fmt.Println("  them durable on NBD FLUSH, which is what a sheep does with its journal; fio sends no flushes,")
	fmt.Println("  so neither side pays for durability the other skips, and both read from the page cache.")
}

// result is one job on one target: every run, the medians and the ratios
// of the medians to the baseline's.
type result struct {
	Job           string   `json:"job"`
	Title         string   `json:"title"`
	Target        string   `json:"target"`
	Runs          []sample `json:"runs"`
	Median        sample   `json:"median"`
	IOPSSpread    float64  `json:"iops_spread"` // (max-min)/median over the runs
	IOPSRatio     float64  `json:"iops_ratio"`
	BWRatio       float64  `json:"bw_ratio"`
	ClatMeanRatio float64  `json:"clat_mean_ratio"`
	ClatP99Ratio  float64  `json:"clat_p99_ratio"`
}

// check is one of the targets.
type check struct {
	Goal      string  `json:"goal"`
	Target    string  `json:"target"`
	Job       string  `json:"job"`
	Metric    string  `json:"metric"` // iops, bw or clat_mean
	AtMost    bool    `json:"at_most"`
	Threshold float64 `json:"threshold"`
	Ratio     float64 `json:"ratio"`
	Value     float64 `json:"value"`
	Baseline  float64 `json:"baseline"`
	Pass      bool    `json:"pass"`
}

type report struct {
	Started  string      `json:"started"`
	Seconds  float64     `json:"duration_seconds"`
	Machine  machineInfo `json:"machine"`
	Settings struct {
		Runs            int      `json:"runs"`
		RuntimeSeconds  float64  `json:"runtime_seconds"`
		RampSeconds     float64  `json:"ramp_seconds"`
		SizeBytes       int64    `json:"size_bytes"`
		WorkingSetBytes int64    `json:"working_set_bytes"`
		FioArgs         []string `json:"fio_args_example"`
	} `json:"settings"`
	Targets        []*target       `json:"targets"`
	Prefill        []prefillResult `json:"prefill"`
	Results        []result        `json:"results"`
	Checks         []check         `json:"checks"`
	Passed         int             `json:"passed"`
	IdleCPUPercent int64           `json:"idle_cpu_percent"` // all target processes at rest
	SettleMedian   float64         `json:"settle_median_seconds"`
	SettleTimeouts int             `json:"settle_timeouts"`
	Snapshots      *snapshotReport `json:"snapshots,omitempty"`
	CLI            *cliReport      `json:"cli,omitempty"`
}

// report computes medians, ratios and the targets.
func (b *bench) report() *report {
	r := &report{
		Started: b.start.UTC().Format(time.RFC3339),
		Seconds: time.Since(b.start).Seconds(),
		Machine: b.machine,
		Targets: b.targets,
		Prefill: b.prefills,
	}
	r.Settings.Runs = b.cfg.runs
	r.Settings.RuntimeSeconds = b.cfg.runtime.Seconds()
	r.Settings.RampSeconds = b.cfg.ramp.Seconds()
	r.Settings.SizeBytes = b.cfg.size
	r.Settings.WorkingSetBytes = b.cfg.workingSet
	r.Settings.FioArgs = fioArgs(b.cfg, b.targets[0].URI, jobs[0], true, "OUT.json")
	var settles []float64
	for _, d := range b.settles {
		settles = append(settles, d.Seconds())
	}
	r.SettleMedian = median(settles)
	r.IdleCPUPercent = b.idle * int64(time.Second/idleWindow)
	r.SettleTimeouts = b.noisy

	for _, j := range jobs {
		base := medianSample(b.samples[j.ID]["baseline"])
		for _, t := range b.targets {
			runs := b.samples[j.ID][t.Name]
			m := medianSample(runs)
			res := result{Job: j.ID, Title: j.Title, Target: t.Name, Runs: runs, Median: m,
				IOPSRatio:     ratio(m.IOPS, base.IOPS),
				BWRatio:       ratio(m.BW, base.BW),
				ClatMeanRatio: ratio(m.ClatMean, base.ClatMean),
				ClatP99Ratio:  ratio(m.ClatP99, base.ClatP99),
			}
			var iops []float64
			for _, s := range runs {
				iops = append(iops, s.IOPS)
			}
			if len(iops) > 1 && m.IOPS > 0 {
				sort.Float64s(iops)
				res.IOPSSpread = (iops[len(iops)-1] - iops[0]) / m.IOPS
			}
			r.Results = append(r.Results, res)
		}
	}

	// addVs checks tgt's median against ref's (the baseline, or the
	// same cluster without TLS).
	addVs := func(tgt, ref, jobID, metric string, atMost bool, threshold float64) {
		j := jobByID(jobID)
		res := r.find(jobID, tgt)
		base := r.find(jobID, ref)
		c := check{Target: tgt, Job: jobID, Metric: metric, AtMost: atMost, Threshold: threshold}
		name := map[string]string{"iops": "IOPS", "bw": "bandwidth", "clat_mean": "mean latency"}[metric]
		op := ">="
		if atMost {
			op = "<="
		}
		copies := map[string]string{"3-node": "copies=3", "1-node": "copies=1", "3-node-tls": "copies=3 TLS"}[tgt]
		against := map[string]string{"baseline": "baseline", "3-node": "copies=3 without TLS"}[ref]
		c.Goal = fmt.Sprintf("%s %s %s %s %.2fx %s", copies, j.Title, name, op, threshold, against)
		switch metric {
		case "iops":
			c.Value, c.Baseline = res.Median.IOPS, base.Median.IOPS
		case "bw":
			c.Value, c.Baseline = res.Median.BW, base.Median.BW
		case "clat_mean":
			c.Value, c.Baseline = res.Median.ClatMean, base.Median.ClatMean
		}
		c.Ratio = ratio(c.Value, c.Baseline)
		if atMost {
			c.Pass = c.Ratio > 0 && c.Ratio <= threshold
		} else {
			c.Pass = c.Ratio >= threshold
		}
		if c.Pass {
			r.Passed++
		}
		r.Checks = append(r.Checks, c)
	}
	add := func(tgt, jobID, metric string, atMost bool, threshold float64) {
		addVs(tgt, "baseline", jobID, metric, atMost, threshold)
	}
	add("3-node", "randwrite-4k-qd32", "iops", false, 0.5)
	add("3-node", "randread-4k-qd32", "iops", false, 0.8)
	add("3-node", "randwrite-4k-qd1", "clat_mean", true, 2.0)
	for _, j := range jobs {
		metric := "iops"
		if j.ByBW {
			metric = "bw"
		}
		add("1-node", j.ID, metric, false, 0.9)
	}
	if b.cfg.tls {
		for _, j := range jobs {
			metric := "iops"
			if j.ByBW {
				metric = "bw"
			}
			addVs("3-node-tls", "3-node", j.ID, metric, false, 0.8)
		}
	}
	return r
}

func (r *report) find(jobID, tgt string) result {
	for _, res := range r.Results {
		if res.Job == jobID && res.Target == tgt {
			return res
		}
	}
	panic("no result for " + jobID + " on " + tgt)
}

func ratio(v, base float64) float64 {
	if base == 0 {
		return 0
	}
	return v / base
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// medianSample takes the median of each metric separately.
func medianSample(runs []sample) sample {
	pick := func(f func(sample) float64) float64 {
		var v []float64
		for _, s := range runs {
			v = append(v, f(s))
		}
		return median(v)
	}
	return sample{
		IOPS:     pick(func(s sample) float64 { return s.IOPS }),
		BW:       pick(func(s sample) float64 { return s.BW }),
		ClatMean: pick(func(s sample) float64 { return s.ClatMean }),
		ClatP99:  pick(func(s sample) float64 { return s.ClatP99 }),
		IOs:      int64(math.Round(pick(func(s sample) float64 { return float64(s.IOs) }))),
	}
}

func printReport(w io.Writer, r *report) {
	fmt.Fprintf(w, "\nResults: medians of %d run(s); ratios are median(target) / median(baseline):\n", r.Settings.Runs)
	fmt.Fprintln(w, "higher is better for IOPS and BW, lower for latency; spread = (max-min)/median of IOPS over the runs.")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "job\ttarget\tIOPS\tmean lat\tp99 lat\tBW\tIOPS ratio\tlat ratio mean/p99\tspread\t")
	last := ""
	for _, res := range r.Results {
		j := jobByID(res.Job)
		title := ""
		if res.Job != last {
			title, last = res.Title, res.Job
		}
		iopsRatio, latRatio := fmt.Sprintf("%.2fx", res.IOPSRatio), "-"
		if j.Latency {
			latRatio = fmt.Sprintf("%.2fx / %.2fx", res.ClatMeanRatio, res.ClatP99Ratio)
		}
		if res.Target == "baseline" {
			iopsRatio, latRatio = "(base)", "(base)"
			if !j.Latency {
				latRatio = "-"
			}
		}
		spread := "n/a"
		if len(res.Runs) > 1 {
			spread = fmt.Sprintf("%.0f%%", 100*res.IOPSSpread)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t%s\t%s/s\t%s\t%s\t%s\t\n", title, res.Target, res.Median.IOPS,
			fmtLat(res.Median.ClatMean), fmtLat(res.Median.ClatP99), fmtBytes(res.Median.BW), iopsRatio, latRatio, spread)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nIssue targets (on the medians above):\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range r.Checks {
		verdict := "MISS"
		if c.Pass {
			verdict = "PASS"
		}
		var detail string
		switch c.Metric {
		case "iops":
			detail = fmt.Sprintf("%.0f vs %.0f IOPS", c.Value, c.Baseline)
		case "bw":
			detail = fmt.Sprintf("%s/s vs %s/s", fmtBytes(c.Value), fmtBytes(c.Baseline))
		case "clat_mean":
			detail = fmt.Sprintf("%s vs %s", fmtLat(c.Value), fmtLat(c.Baseline))
		}
		fmt.Fprintf(tw, "  %s\t%s\tgot %.2fx\t(%s)\n", verdict, c.Goal, c.Ratio, detail)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d of %d targets met.\n", r.Passed, len(r.Checks))

	fmt.Fprintf(w, "\nNoise: load average %s at start, %s at end; settling before a run took %.1fs (median)",
		r.Machine.LoadAvgStart, r.Machine.LoadAvgEnd, r.SettleMedian)
	if r.SettleTimeouts > 0 {
		fmt.Fprintf(w, ", and %d time(s) the targets were still busy after %s", r.SettleTimeouts, settleMax)
	}
	fmt.Fprintln(w, ".")
	fmt.Fprintln(w, "A ratio closer to its threshold than the spread is not conclusive: rerun with more --runs.")
	fmt.Fprintf(w, "Total time %s.\n", time.Duration(r.Seconds*float64(time.Second)).Round(time.Second))
}

func writeJSON(path string, r *report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// fmtLat formats nanoseconds.
func fmtLat(ns float64) string {
	switch {
	case ns < 1e3:
		return fmt.Sprintf("%.0fns", ns)
	case ns < 1e6:
		return fmt.Sprintf("%.1fµs", ns/1e3)
	case ns < 1e9:
		return fmt.Sprintf("%.2fms", ns/1e6)
	default:
		return fmt.Sprintf("%.2fs", ns/1e9)
	}
}

// fmtBytes formats a byte count (or rate) in binary units.
func fmtBytes(n float64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", n/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", n/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", n/(1<<10))
	default:
		return fmt.Sprintf("%.0f B", n)
	}
}
