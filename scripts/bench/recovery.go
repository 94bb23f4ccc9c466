package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The recovery job, on the CLI cluster after its jobs: its last node is
// stopped, its directory wiped and the node started again at the same
// address, a new member that recovery refills. Measured: the seconds from
// its start until every node reports the new epoch recovered, the bytes it
// then stores against what it stored before (the ideal: with copies=3 on
// 3 nodes it holds everything again), and that rate against a plain `cp
// -r` of the refilled node's objects (obj/) on the same disk, sync
// included (recovery writes durably).

// recoveryReport is the outcome of the recovery job.
type recoveryReport struct {
	Node        string  `json:"node"`
	BytesBefore uint64  `json:"bytes_before"` // the node's store before the wipe
	BytesAfter  uint64  `json:"bytes_after"`  // after the refill
	Seconds     float64 `json:"seconds"`      // start of the wiped node to all done
	CopySeconds float64 `json:"cp_seconds"`   // cp -r of the refilled directory, and sync
	CopyBytes   int64   `json:"cp_bytes"`     // what cp copied (the directory's files)
}

// recoveryRow is the part of `node recovery --json` the job reads.
type recoveryRow struct {
	ID      string `json:"id"`
	Addr    string `json:"addr"`
	Epoch   uint32 `json:"epoch"`
	Serving bool   `json:"serving"`
	AllDone bool   `json:"recovery_all_done"`
	Objects int    `json:"objects"`
	Used    uint64 `json:"used"`
}

func recoveryRows(ctx context.Context, t *target) ([]recoveryRow, error) {
	out, err := t.cli(ctx, "node", "recovery", "-a", t.admin, "--json")
	if err != nil {
		return nil, err
	}
	var rows []recoveryRow
	if err := json.Unmarshal(out, &rows); err != nil {
		return nil, fmt.Errorf("node recovery --json: %w", err)
	}
	return rows, nil
}

// recovery wipes and refills t's last node (see above). With load, a
// client writes through another node meanwhile (see loadedRecovery).
func (b *bench) recovery(t *target, idle int64, load func(context.Context)) (*recoveryReport, error) {
	ctx := b.sup.ctx
	i := len(t.procs) - 1
	old := t.procs[i]
	argv := old.cmd.Args
	var dir, listen string
	for k := 0; k+1 < len(argv); k++ {
		switch argv[k] {
		case "--dir":
			dir = argv[k+1]
		case "--listen":
			listen = argv[k+1]
		}
	}
	if err := clusterHealthy(ctx, t.bin, t.admin, len(t.procs)); err != nil {
		return nil, err
	}
	rows, err := recoveryRows(ctx, t)
	if err != nil {
		return nil, err
	}
	var before recoveryRow
	for _, r := range rows {
		if r.Addr == listen {
			before = r
		}
	}
	if before.ID == "" {
		return nil, fmt.Errorf("node recovery lists no node at %s", listen)
	}
	rep := &recoveryReport{Node: old.name, BytesBefore: before.Used}
	fmt.Printf("recovery: %s wiped (%s stored) and started again at %s ...\n", old.name, fmtBytes(float64(before.Used)), listen)
	old.stop(b.sup.hurry)
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("wiping %s: %w", dir, err)
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	loaded := make(chan struct{})
	defer func() { stopLoad(); <-loaded }()
	t0 := time.Now()
	p, err := b.sup.start(old.name, old.logPath+".wiped", argv...)
	if err != nil {
		close(loaded)
		return nil, err
	}
	t.procs[i] = p
	go func() {
		defer close(loaded)
		if load != nil {
			load(loadCtx)
		}
	}()
	// Done when every node is in one epoch past the wipe, serving and
	// recovered, and the new member holds at least the objects the old
	// one did.
	err = poll(ctx, 5*time.Minute, t.procs, "the wiped node to be refilled", func() error {
		rows, err := recoveryRows(ctx, t)
		if err != nil {
			return err
		}
		var fresh *recoveryRow
		for k, r := range rows {
			if !r.Serving || !r.AllDone || r.Epoch != rows[0].Epoch || r.Epoch <= before.Epoch {
				return fmt.Errorf("%s: epoch %d, serving %v, recovered %v", r.Addr, r.Epoch, r.Serving, r.AllDone)
			}
			if r.Addr == listen && r.ID != before.ID {
				fresh = &rows[k]
			}
		}
		switch {
		case len(rows) != len(t.procs):
			return fmt.Errorf("%d member(s)", len(rows))
		case fresh == nil:
			return fmt.Errorf("no new member at %s yet", listen)
		case fresh.Objects < before.Objects:
			return fmt.Errorf("the new member holds %d of %d objects", fresh.Objects, before.Objects)
		}
		rep.BytesAfter = fresh.Used
		return nil
	})
	if err != nil {
		return nil, err
	}
	rep.Seconds = time.Since(t0).Seconds()
	stopLoad()
	<-loaded
	fmt.Printf("  refilled in %.2fs: %s, %s/s\n", rep.Seconds, fmtBytes(float64(rep.BytesAfter)), fmtBytes(float64(rep.BytesAfter)/rep.Seconds))

	if load != nil {
		return rep, nil // the rate under load is not the refill's own
	}
	// The plain copy of the same bytes, on the same disk.
	settle(ctx, t.procs, idle)
	cp := filepath.Join(b.work, "cli", "cp-copy")
	t1 := time.Now()
	// obj/ only: the journal and the reserve are preallocated, not data.
	if _, errOut, err := command(ctx, "cp", "-r", filepath.Join(dir, "obj"), cp); err != nil {
		return nil, fmt.Errorf("cp -r %s/obj: %w: %s", dir, err, errOut)
	}
	syscall.Sync()
	rep.CopySeconds = time.Since(t1).Seconds()
	err = filepath.Walk(cp, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			rep.CopyBytes += fi.Size()
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("sizing the copy: %w", err)
	}
	if err := os.RemoveAll(cp); err != nil {
		return nil, fmt.Errorf("removing the copy: %w", err)
	}
	fmt.Printf("  cp -r of the refilled obj/ and sync: %s in %.2fs, %s/s\n", fmtBytes(float64(rep.CopyBytes)), rep.CopySeconds, fmtBytes(float64(rep.CopyBytes)/rep.CopySeconds))
	return rep, nil
}

// checks are the recovery job's targets.
func (r *recoveryReport) checks() []check {
	rate, cpRate := float64(r.BytesAfter)/r.Seconds, float64(r.CopyBytes)/r.CopySeconds
	moved := check{Goal: "recovery: bytes the refilled node stores <= 1.10x what it stored before (bytes sent not counted)",
		Issue: "#13", Target: "cli", Job: "recovery", Metric: "bytes", AtMost: true, Threshold: 1.1,
		Value: float64(r.BytesAfter), Baseline: float64(r.BytesBefore), Against: "before the wipe"}
	moved.Ratio = ratio(moved.Value, moved.Baseline)
	speed := check{Goal: "recovery: refill rate >= 0.50x cp -r of the refilled objects and sync",
		Issue: "#13", Target: "cli", Job: "recovery", Metric: "bw", Threshold: 0.5,
		Value: rate, Baseline: cpRate, Ratio: ratio(rate, cpRate), Against: "cp -r"}
	cs := []check{moved, speed}
	for i := range cs {
		cs[i].judge()
	}
	return cs
}

// The loaded recovery: the same refill again, while a client writes 4K
// blocks at random at QD1 (fio over 16 MiB of a prefilled VDI, through the
// first node) from the wiped node's start until every node reports it
// done, against the same client's IOPS in 1 s runs just before the wipe. The issue's target:
// during recovery at least half the IOPS of before it.

// loadReport is the outcome of the loaded recovery.
type loadReport struct {
	Seconds    float64   `json:"seconds"` // the refill under load
	IOPSBefore []float64 `json:"iops_before"`
	IOPSDuring []float64 `json:"iops_during"` // one run, the refill's length
}

const loadVDISize = 16 << 20

func (b *bench) loadedRecovery(t *target, idle int64) (*loadReport, error) {
	ctx := b.sup.ctx
	const vdi = "recovery-load"
	if _, err := admin(ctx, t.bin, "vdi", "create", "-a", t.admin, vdi, formatSize(loadVDISize)); err != nil {
		return nil, err
	}
	uri := strings.TrimSuffix(t.URI, "/bench") + "/" + vdi
	cfg := *b.cfg
	cfg.workingSet, cfg.runtime, cfg.ramp = loadVDISize, time.Second, 0
	dir := filepath.Join(b.work, "cli")
	w := job{ID: "recovery-load-fill", RW: "write", BS: "1M", QD: 8}
	if _, err := runFio(ctx, &cfg, uri, w, false, filepath.Join(dir, w.ID+".json")); err != nil {
		return nil, err
	}
	j := job{ID: "recovery-load", RW: "randwrite", BS: "4k", QD: 1}
	rep := &loadReport{}
	settle(ctx, t.procs, idle)
	for k := 0; k < 3; k++ {
		s, err := runFio(ctx, &cfg, uri, j, true, filepath.Join(dir, fmt.Sprintf("%s-before-%d.json", j.ID, k)))
		if err != nil {
			return nil, err
		}
		rep.IOPSBefore = append(rep.IOPSBefore, s.IOPS)
	}
	fmt.Printf("  4K randwrite QD1 before: %.0f IOPS (median of %d 1 s runs); the refill again, under that load ...\n", median(rep.IOPSBefore), len(rep.IOPSBefore))
	// One fio run for the whole refill: SIGTERM (the load's context ends
	// when the refill is done) makes fio stop and report what it did.
	var loadErr error
	load := func(lctx context.Context) {
		during := cfg
		during.runtime = 10 * time.Minute
		out := filepath.Join(dir, j.ID+"-during.json")
		_, errOut, err := command(lctx, fioArgs(&during, uri, j, true, out)...)
		if err != nil && lctx.Err() == nil {
			loadErr = fmt.Errorf("fio: %w: %s", err, strings.TrimSpace(string(errOut)))
			return
		}
		s, err := parseFio(out, j)
		if err != nil {
			loadErr = err
			return
		}
		rep.IOPSDuring = append(rep.IOPSDuring, s.IOPS)
	}
	r, err := b.recovery(t, idle, load)
	if err != nil {
		return nil, err
	}
	if loadErr != nil {
		return nil, fmt.Errorf("the client during the refill: %w", loadErr)
	}
	rep.Seconds = r.Seconds
	fmt.Printf("  4K randwrite QD1 during the refill (%.2fs): %.0f IOPS, %.2fx before\n",
		r.Seconds, median(rep.IOPSDuring), ratio(median(rep.IOPSDuring), median(rep.IOPSBefore)))
	return rep, nil
}

func (r *loadReport) checks() []check {
	c := check{Goal: "recovery: client 4K randwrite QD1 IOPS during the refill >= 0.50x before it",
		Issue: "#13", Target: "cli", Job: "recovery-load", Metric: "iops", Threshold: 0.5,
		Value: median(r.IOPSDuring), Baseline: median(r.IOPSBefore), Against: "before the refill"}
	c.Ratio = ratio(c.Value, c.Baseline)
	c.judge()
	return []check{c}
}
