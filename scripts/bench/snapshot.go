package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// What a snapshot costs, measured on the 3-node cluster after the fio
// jobs: how long `vdi snapshot` takes for a 4 TiB thin VDI against a
// 1 GiB one, each with 1 GiB written (the same time is the aim: no data
// is copied, and the new working VDI's table is written only where the
// old one had entries), and 4K randwrite QD32 IOPS on the bench VDI for
// 10 s right after a snapshot against right before it (every first write
// to an object after a snapshot copies the object), and once every object
// is the VDI's own again.

// snapshotReport is the outcome of the snapshot phase.
type snapshotReport struct {
	SmallSeconds []float64 `json:"small_vdi_seconds"` // vdi snapshot of a 1 GiB VDI, 1 GiB written
	LargeSeconds []float64 `json:"large_vdi_seconds"` // vdi snapshot of a 4 TiB VDI, 1 GiB written
	IOPSBefore   []float64 `json:"iops_before"`       // 4K randwrite QD32, the run before a snapshot
	IOPSAfter    []float64 `json:"iops_after"`        // the run right after it
	IOPSOwned    []float64 `json:"iops_owned"`        // once every object is the VDI's own again
}

func (b *bench) snapshots() (*snapshotReport, error) {
	var t *target
	for _, x := range b.targets {
		if x.Name == "3-node" {
			t = x
		}
	}
	if t == nil {
		return nil, fmt.Errorf("no 3-node target")
	}
	ctx := b.sup.ctx
	nbdBase := strings.TrimSuffix(t.URI, "/bench")
	// --quick writes less and runs shorter: it tests the phase, not
	// what a snapshot costs.
	fill, long := "1G", *b.cfg
	long.runtime = 10 * time.Second
	if b.cfg.quick {
		fill, long.runtime = formatSize(b.cfg.cliSize), b.cfg.runtime
	}
	fmt.Println("snapshots on the 3-node cluster: vdi snapshot of a 1 GiB and a 4 TiB VDI (1 GiB written to each), and 4K randwrite QD32 before and after a snapshot ...")
	vdis := []struct{ name, size string }{{"snap-1g", "1G"}, {"snap-4t", "4T"}}
	for _, v := range vdis {
		if _, err := admin(ctx, t.bin, "vdi", "create", "-a", t.admin, v.name, v.size); err != nil {
			return nil, err
		}
		out := filepath.Join(b.work, "fio", "snapfill-"+v.name+".json")
		argv := []string{b.cfg.fio, "--name=fill", "--ioengine=nbd", "--uri=" + nbdBase + "/" + v.name,
			"--rw=write", "--bs=1M", "--iodepth=8", "--size=" + fill, "--output-format=json", "--output=" + out}
		if _, errOut, err := command(ctx, argv...); err != nil {
			return nil, fmt.Errorf("writing %s to %s: %w: %s", fill, v.name, err, errOut)
		}
	}
	rep := &snapshotReport{}
	for r := 0; r < b.cfg.runs; r++ {
		for k := range vdis {
			v := vdis[(r+k)%len(vdis)]
			b.settle()
			t0 := time.Now()
			if _, err := admin(ctx, t.bin, "vdi", "snapshot", "-a", t.admin, "-s", fmt.Sprintf("r%d", r+1), v.name); err != nil {
				return nil, err
			}
			el := time.Since(t0).Seconds()
			if v.name == "snap-1g" {
				rep.SmallSeconds = append(rep.SmallSeconds, el)
			} else {
				rep.LargeSeconds = append(rep.LargeSeconds, el)
			}
			fmt.Printf("  vdi snapshot %-8s (%s) %6.1f ms\n", v.name, v.size, el*1000)
		}
	}
	// 4K randwrite QD32 over the working set for 10 s right before a
	// snapshot and right after it, and then again once a sequential
	// overwrite of the working set has made every object the VDI's own.
	j := jobByID("randwrite-4k-qd32")
	for r := 0; r < b.cfg.runs; r++ {
		for _, phase := range []string{"before", "after", "owned"} {
			switch phase {
			case "after":
				if _, err := admin(ctx, t.bin, "vdi", "snapshot", "-a", t.admin, "-s", fmt.Sprintf("iops%d", r+1), "bench"); err != nil {
					return nil, err
				}
			case "owned":
				if _, err := runFio(ctx, b.cfg, t.URI, prefillJob, false, filepath.Join(b.work, "fio", fmt.Sprintf("snap-own-run%d.json", r+1))); err != nil {
					return nil, fmt.Errorf("overwriting the working set after a snapshot: %w", err)
				}
			}
			b.settle()
			s, err := runFio(ctx, &long, t.URI, j, true, filepath.Join(b.work, "fio", fmt.Sprintf("snap-%s-run%d.json", phase, r+1)))
			if err != nil {
				return nil, fmt.Errorf("%s %s a snapshot: %w", j.Title, phase, err)
			}
			switch phase {
			case "before":
				rep.IOPSBefore = append(rep.IOPSBefore, s.IOPS)
			case "after":
				rep.IOPSAfter = append(rep.IOPSAfter, s.IOPS)
			default:
				rep.IOPSOwned = append(rep.IOPSOwned, s.IOPS)
			}
			fmt.Printf("  %s for %s, %-6s (round %d/%d): %9.0f IOPS\n", j.Title, long.runtime, phase, r+1, b.cfg.runs, s.IOPS)
		}
	}
	return rep, nil
}

func printSnapshots(r *snapshotReport) {
	if r == nil {
		return
	}
	small, large := median(r.SmallSeconds), median(r.LargeSeconds)
	before, after, owned := median(r.IOPSBefore), median(r.IOPSAfter), median(r.IOPSOwned)
	fmt.Printf("\nSnapshots (3-node, medians of %d): vdi snapshot of 1 GiB %.1f ms, of 4 TiB %.1f ms: 4 TiB / 1 GiB = %.2fx\n",
		len(r.SmallSeconds), small*1000, large*1000, large/small)
	fmt.Printf("  4K randwrite QD32: %.0f IOPS before a snapshot, %.0f right after it (each first write to an object copies it): %.2fx; %.0f once every object is owned again: %.2fx\n",
		before, after, after/before, owned, owned/before)
}
