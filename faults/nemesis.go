package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// nemesis injects a run's faults, one at a time: a fault is applied, held,
// healed, and the next one starts only once the cluster is back to full
// redundancy. So never more than one node is down (copies >= 2) and raft
// keeps a majority, except in the faults that cut a minority off on
// purpose.
type nemesis struct {
	c  *cluster
	fw Firewall
	w  *workload
}

// everyone returns the loopback addresses of every node and client.
func (m *nemesis) everyone() []string {
	var out []string
	for _, n := range m.c.members() {
		out = append(out, n.ip)
	}
	for _, cl := range m.w.clients {
		out = append(out, cl.src)
	}
	return out
}

// isolate drops everything between ip and every other node and client.
func (m *nemesis) isolate(ip string) []Link {
	var drops []Link
	for _, o := range m.everyone() {
		if o != ip {
			drops = append(drops, Link{ip, o}, Link{o, ip})
		}
	}
	return drops
}

// wait sleeps d or until ctx ends.
func wait(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// inject applies f, holds it and heals it. It returns a description of
// what it did.
func (m *nemesis) inject(ctx context.Context, f Fault) (string, error) {
	nodes := m.c.members()
	rng := rand.New(rand.NewPCG(f.Pick, f.Pick2))
	target := nodes[f.Pick%uint64(len(nodes))]
	other := func() *node {
		rest := slices.DeleteFunc(slices.Clone(nodes), func(n *node) bool { return n == target })
		return rest[f.Pick2%uint64(len(rest))]
	}
	cut := func(drops []Link) error {
		if err := m.fw.Apply(ctx, drops); err != nil {
			return err
		}
		werr := wait(ctx, f.Hold)
		if err := m.fw.Apply(context.WithoutCancel(ctx), nil); err != nil {
			return err
		}
		return werr
	}
	switch f.Kind {
	case KindPartition:
		b := other()
		return fmt.Sprintf("%s <-/-> %s", target.ip, b.ip), cut([]Link{{target.ip, b.ip}, {b.ip, target.ip}})
	case KindOneWay:
		b := other()
		return fmt.Sprintf("%s -/-> %s", target.ip, b.ip), cut([]Link{{target.ip, b.ip}})
	case KindIsolateLeader:
		what := "leader"
		if l, err := m.c.leader(ctx); err == nil {
			target = l
		} else {
			what = fmt.Sprintf("no leader found (%v), instead", err)
		}
		return fmt.Sprintf("%s %s isolated", what, target.ip), cut(m.isolate(target.ip))
	case KindIsolateAttacher:
		cl := m.w.clients[f.Pick2%uint64(len(m.w.clients))]
		what := fmt.Sprintf("attacher of client %d", cl.id)
		if a := m.w.attacher(cl.id); a != nil {
			target = a
		} else {
			what = fmt.Sprintf("client %d has no attacher now, instead", cl.id)
		}
		return fmt.Sprintf("%s %s isolated", what, target.ip), cut(m.isolate(target.ip))
	case KindSplit:
		minority := 1 + int(f.Pick2%uint64((len(nodes)-1)/2))
		perm := rng.Perm(len(nodes))
		var small, big []string
		for i, p := range perm {
			if i < minority {
				small = append(small, nodes[p].ip)
			} else {
				big = append(big, nodes[p].ip)
			}
		}
		var drops []Link
		for _, a := range small {
			for _, b := range big {
				drops = append(drops, Link{a, b}, Link{b, a})
			}
		}
		return fmt.Sprintf("%v | %v", small, big), cut(drops)
	case KindKill:
		if err := m.c.stop(target, syscall.SIGKILL); err != nil {
			return "", err
		}
		werr := wait(ctx, f.Hold)
		return fmt.Sprintf("kill -9 %s", target.ip), errors.Join(werr, m.c.start(target, false))
	case KindPause:
		if err := m.c.signal(target, syscall.SIGSTOP); err != nil {
			return "", err
		}
		werr := wait(ctx, f.Hold)
		return fmt.Sprintf("SIGSTOP %s", target.ip), errors.Join(werr, m.c.signal(target, syscall.SIGCONT))
	case KindRestart:
		if err := m.c.stop(target, syscall.SIGTERM); err != nil {
			return "", err
		}
		werr := wait(ctx, f.Hold)
		return fmt.Sprintf("SIGTERM %s", target.ip), errors.Join(werr, m.c.start(target, false))
	case KindENOSPC:
		filled, err := fill(target.dir)
		if err != nil {
			return "", err
		}
		werr := wait(ctx, f.Hold)
		rerr := os.Remove(filepath.Join(target.dir, fillerName))
		return fmt.Sprintf("%s full (%d MiB filler)", target.ip, filled>>20), errors.Join(werr, rerr)
	case KindBitFlip, KindDeleteObject:
		sig := syscall.SIGTERM
		if f.Pick2&1 == 1 {
			sig = syscall.SIGKILL
		}
		if err := m.c.stop(target, sig); err != nil {
			return "", err
		}
		var what string
		var err error
		if f.Kind == KindBitFlip {
			what, err = flipBits(target.dir, rng)
		} else {
			what, err = deleteObject(target.dir, rng)
		}
		if err != nil {
			return "", err
		}
		werr := wait(ctx, f.Hold)
		return fmt.Sprintf("%v %s: %s", sig, target.ip, what), errors.Join(werr, m.c.start(target, false))
	case KindTruncateJournal:
		if err := m.c.stop(target, syscall.SIGKILL); err != nil {
			return "", err
		}
		what, err := truncateJournal(target.dir, rng)
		if err != nil {
			return "", err
		}
		werr := wait(ctx, f.Hold)
		return fmt.Sprintf("kill -9 %s: %s", target.ip, what), errors.Join(werr, m.c.start(target, false))
	case KindReplaceDisk:
		if err := m.c.stop(target, syscall.SIGKILL); err != nil {
			return "", err
		}
		if err := emptyDir(target.dir); err != nil {
			return "", err
		}
		werr := wait(ctx, f.Hold)
		return fmt.Sprintf("kill -9 %s, disk emptied, same address", target.ip), errors.Join(werr, m.c.start(target, false))
	case KindReplaceDiskNewAddr:
		if err := m.c.stop(target, syscall.SIGKILL); err != nil {
			return "", err
		}
		fresh, err := m.c.addNode(ctx, target.idx)
		if err != nil {
			return "", err
		}
		m.c.mu.Lock()
		for i, n := range m.c.nodes {
			if n == target {
				m.c.nodes[i] = fresh
			}
		}
		m.c.mu.Unlock()
		werr := wait(ctx, f.Hold)
		return fmt.Sprintf("kill -9 %s, replaced by an empty node at %s", target.ip, fresh.ip), errors.Join(werr, m.c.start(fresh, false))
	}
	return "", fmt.Errorf("unknown fault kind %q", f.Kind)
}

const fillerName = "harness-filler"

// fill fills the filesystem of dir with a filler file until it is full.
func fill(dir string) (int64, error) {
	f, err := os.Create(filepath.Join(dir, fillerName))
	if err != nil {
		return 0, fmt.Errorf("filler: %w", err)
	}
	defer f.Close()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if err := unix.Fallocate(int(f.Fd()), 0, 0, free); err != nil && !errors.Is(err, unix.ENOSPC) {
		return 0, fmt.Errorf("fallocate filler: %w", err)
	}
	// Whatever fallocate left (it may stop short of the last blocks).
	buf := make([]byte, 64<<10)
	off, _ := f.Seek(0, 2)
	for {
		n, err := f.WriteAt(buf, off)
		off += int64(n)
		if err != nil {
			if errors.Is(err, unix.ENOSPC) {
				return off, nil
			}
			return off, fmt.Errorf("fill: %w", err)
		}
	}
}

// objectFiles lists the object data files and sidecars under dir/obj.
func objectFiles(dir string, sidecars bool) []string {
	ents, _ := os.ReadDir(filepath.Join(dir, "obj"))
	var out []string
	for _, e := range ents {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".corrupt"):
		case strings.HasSuffix(name, ".meta"):
			if sidecars {
				out = append(out, filepath.Join(dir, "obj", name))
			}
		case len(name) == 16:
			out = append(out, filepath.Join(dir, "obj", name))
		}
	}
	sort.Strings(out)
	return out
}

// flipBits flips one bit in each of a few object files and sidecars.
func flipBits(dir string, rng *rand.Rand) (string, error) {
	files := objectFiles(dir, true)
	if len(files) == 0 {
		return "no object files to corrupt", nil
	}
	var done []string
	for range 1 + rng.IntN(3) {
		p := files[rng.IntN(len(files))]
		st, err := os.Stat(p)
		if err != nil || st.Size() == 0 {
			continue
		}
		off := rng.Int64N(st.Size())
		bit := byte(1) << rng.IntN(8)
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return "", fmt.Errorf("bit flip: %w", err)
		}
		b := []byte{0}
		if _, err = f.ReadAt(b, off); err == nil {
			b[0] ^= bit
			_, err = f.WriteAt(b, off)
		}
		f.Close()
		if err != nil {
			return "", fmt.Errorf("bit flip %s: %w", p, err)
		}
		done = append(done, fmt.Sprintf("%s@%d^%#x", filepath.Base(p), off, bit))
	}
	return "flipped " + strings.Join(done, " "), nil
}

// deleteObject removes one object's data file (its sidecar stays).
func deleteObject(dir string, rng *rand.Rand) (string, error) {
	files := objectFiles(dir, false)
	if len(files) == 0 {
		return "no object file to delete", nil
	}
	p := files[rng.IntN(len(files))]
	if err := os.Remove(p); err != nil {
		return "", fmt.Errorf("delete object: %w", err)
	}
	return "deleted obj/" + filepath.Base(p), nil
}

// truncateJournal cuts up to 4 KiB off the newest journal file (never
// into its 32-byte header).
func truncateJournal(dir string, rng *rand.Rand) (string, error) {
	ents, _ := os.ReadDir(filepath.Join(dir, "journal"))
	var names []string
	for _, e := range ents {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for i := len(names) - 1; i >= 0; i-- {
		p := filepath.Join(dir, "journal", names[i])
		st, err := os.Stat(p)
		if err != nil || st.Size() <= 32 {
			continue
		}
		// The file is preallocated: cut from the end of its records, which
		// is where its non-zero bytes end.
		end, err := dataEnd(p, st.Size())
		if err != nil {
			return "", err
		}
		if end <= 32 {
			continue
		}
		cut := 1 + rng.Int64N(min(4096, end-32))
		if err := os.Truncate(p, end-cut); err != nil {
			return "", fmt.Errorf("truncate journal: %w", err)
		}
		return fmt.Sprintf("journal %s cut from %d to %d bytes", names[i], end, end-cut), nil
	}
	return "no journal records to cut", nil
}

// dataEnd returns the offset after the last non-zero byte of a file.
func dataEnd(p string, size int64) (int64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("read journal: %w", err)
	}
	end := int64(len(b))
	for end > 0 && b[end-1] == 0 {
		end--
	}
	return min(end, size), nil
}

// emptyDir removes everything inside dir (a disk replacement).
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("empty %s: %w", dir, err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("empty %s: %w", dir, err)
		}
	}
	return nil
}
