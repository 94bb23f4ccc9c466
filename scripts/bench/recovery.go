package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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

// recovery wipes and refills t's last node (see above).
func (b *bench) recovery(t *target, idle int64) (*recoveryReport, error) {
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
	t0 := time.Now()
	p, err := b.sup.start(old.name, old.logPath+".wiped", argv...)
	if err != nil {
		return nil, err
	}
	t.procs[i] = p
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
	fmt.Printf("  refilled in %.2fs: %s, %s/s\n", rep.Seconds, fmtBytes(float64(rep.BytesAfter)), fmtBytes(float64(rep.BytesAfter)/rep.Seconds))

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
