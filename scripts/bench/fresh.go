package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The fresh phase: what a user does first, into never-written space. In
// each of --runs rounds, every target (in an order rotated per round)
// gets a fresh device for each of three jobs: fio 1M sequential writes at
// QD8 over all of it once (freshJob), `qemu-img convert` of the random
// image into another fresh device (import), and `qemu-img convert` of
// that device back out to a file (export), which is then compared with
// the image. A cluster's fresh device is a new thin VDI of --cli-size;
// the baseline's is its second qemu-nbd's sparse file, emptied
// (truncated) first. The samples join the fio jobs' in the report, so
// their medians get the same ratios to the baseline.

// image returns the random image of --cli-size that the fresh phase and
// the CLI jobs import (made once per run: random, so that nothing can
// compress or skip it).
func (b *bench) image() (string, error) {
	if b.imagePath != "" {
		return b.imagePath, nil
	}
	p := filepath.Join(b.work, "image.raw")
	if err := randomImage(p, b.cfg.cliSize); err != nil {
		return "", fmt.Errorf("making the random image: %w", err)
	}
	b.imagePath = p
	return p, nil
}

// freshPhase runs the fresh jobs on every target.
func (b *bench) freshPhase() error {
	img, err := b.image()
	if err != nil {
		return err
	}
	size := b.cfg.cliSize
	fmt.Printf("fresh phase: on a fresh %s device of every target, fio 1M writes QD8 over all of it, qemu-img convert of a random image in, and back out (%d round(s)) ...\n",
		formatSize(size), b.cfg.runs)
	cfg := *b.cfg
	cfg.workingSet = size // the whole fresh device, once
	out := filepath.Join(b.work, "export.raw")
	for _, id := range []string{freshJob.ID, "import-qemu-img", "export-qemu-img"} {
		b.samples[id] = map[string][]sample{}
	}
	for r := 0; r < b.cfg.runs; r++ {
		for k := range b.targets {
			t := b.targets[(r+k)%len(b.targets)]
			if err := b.checkAlive(); err != nil {
				return err
			}
			// fresh returns the address and export name of a new
			// never-written device of t.
			fresh := func(what string) (string, string, error) {
				if t.freshFile != "" {
					return t.freshAddr, "fresh", emptyFile(t.freshFile, size)
				}
				name := fmt.Sprintf("fresh-%s-r%d", what, r+1)
				_, err := t.cli(b.sup.ctx, "vdi", "create", "-a", t.admin, name, formatSize(size))
				return t.nbdAddr, name, err
			}
			addr, name, err := fresh("fio")
			if err != nil {
				return fmt.Errorf("fresh device on %s: %w", t.Name, err)
			}
			note := b.settle()
			s, err := runFio(b.sup.ctx, &cfg, t.uriOf(addr, name), freshJob, false,
				filepath.Join(b.work, "fio", fmt.Sprintf("%s-%s-run%d.json", freshJob.ID, t.Name, r+1)))
			if err != nil {
				return fmt.Errorf("%s on %s (run %d): %w", freshJob.Title, t.Name, r+1, err)
			}
			b.addFresh(freshJob.ID, t, r, s, note)

			if addr, name, err = fresh("img"); err != nil {
				return fmt.Errorf("fresh device on %s: %w", t.Name, err)
			}
			for _, in := range []bool{true, false} {
				id := "import-qemu-img"
				if !in {
					id = "export-qemu-img"
				}
				argv := t.qemuImg(in, addr, name, img)
				if !in {
					argv = t.qemuImg(in, addr, name, out)
				}
				if r == 0 {
					b.commands[id+" "+t.Name] = strings.Join(argv, " ")
				}
				note := b.settle()
				t0 := time.Now()
				if _, errOut, err := command(b.sup.ctx, argv...); err != nil {
					return fmt.Errorf("`%s` (run %d): %w: %s", strings.Join(argv, " "), r+1, err, strings.TrimSpace(string(errOut)))
				}
				el := time.Since(t0)
				b.addFresh(id, t, r, sample{BW: float64(size) / el.Seconds()}, note)
			}
			if err := sameFiles(img, out); err != nil {
				return fmt.Errorf("exported from %s: %w", t.Name, err)
			}
			if err := os.Remove(out); err != nil {
				return fmt.Errorf("removing the export: %w", err)
			}
		}
	}
	return nil
}

// addFresh records one fresh-phase sample and prints its progress line.
func (b *bench) addFresh(id string, t *target, r int, s sample, note string) {
	b.samples[id][t.Name] = append(b.samples[id][t.Name], s)
	fmt.Printf("  %-20s run %d/%d  %-10s %10s/s  (%s)\n", jobByID(id).Title, r+1, b.cfg.runs, t.Name, fmtBytes(s.BW), note)
}
