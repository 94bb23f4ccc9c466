package core_test

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/sim"
)

// TestScenarios runs the interaction scripts in testdata/: small stories
// of the VDI lifecycle told in commands (create, write, snapshot, clone,
// crash, stabilize, ...) with the expected output beside each, in the
// style of etcd raft's interaction tests. The output names only what a
// user sees (results, data, listings, objects stored once the cluster is
// stable), so the scripts survive changes to the random stream. Run with
// -rewrite to regenerate the expected output after a deliberate change,
// and read the diff.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		if rel, _ := filepath.Rel("testdata", path); strings.HasPrefix(rel, "fuzz"+string(filepath.Separator)) {
			return // the fuzz targets' corpora (testdata/fuzz), not scenarios
		}
		sc := &scenario{t: t}
		datadriven.RunTest(t, path, sc.run)
	})
}

// blockSize is the granularity scripts read and write at.
const blockSize = 512

type scenario struct {
	t       *testing.T
	h       *sim.Harness
	pending []*asyncOp
}

type asyncOp struct {
	what string
	done bool
	out  string
}

func (sc *scenario) run(t *testing.T, d *datadriven.TestData) string {
	if d.Cmd != "cluster" && sc.h == nil {
		d.Fatalf(t, "no cluster: start with 'cluster'")
	}
	switch d.Cmd {
	case "cluster":
		cfg := sim.DefaultConfig()
		cfg.Nodes, cfg.Spares, cfg.Copies, cfg.BlockShift = argInt(d, "nodes", 3), 0, argInt(d, "copies", 3), 12
		cfg.Seed = uint64(argInt(d, "seed", 1))
		h, err := sim.NewHarness(cfg)
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		sc.h = h
		return "ok"
	case "create":
		return sc.do(d, &core.Request{Type: core.ReqCreateVDI, Name: argStr(d, "name", ""), Size: argSize(d, "size", 16<<10)}, nil)
	case "attach", "detach":
		typ := core.ReqAttach
		if d.Cmd == "detach" {
			typ = core.ReqDetach
		}
		return sc.do(d, &core.Request{Type: typ, VID: sc.vid(d), Force: d.HasArg("force")}, nil)
	case "write", "zero", "trim":
		r := &core.Request{VID: sc.vid(d), Off: argSize(d, "off", 0), Len: argSize(d, "len", blockSize), Exact: d.HasArg("snap")}
		switch d.Cmd {
		case "write":
			r.Type = core.ReqWrite
			r.Data = pattern(r.Len, uint64(argInt(d, "value", 1)))
		case "zero":
			r.Type = core.ReqZero
		case "trim":
			r.Type = core.ReqTrim
		}
		return sc.do(d, r, nil)
	case "read":
		r := &core.Request{Type: core.ReqRead, VID: sc.vid(d), Off: argSize(d, "off", 0), Len: argSize(d, "len", 0), Exact: d.HasArg("snap")}
		if r.Len == 0 {
			r.Len = sc.h.Cluster().VDI(r.VID).Size - r.Off
		}
		return sc.do(d, r, func(rep core.Reply) string { return blocks(rep.Data, r.Off) })
	case "map":
		v := sc.h.Cluster().VDI(sc.vid(d))
		r := &core.Request{Type: core.ReqMap, VID: v.ID, Len: v.Size, Exact: d.HasArg("snap")}
		return sc.do(d, r, func(rep core.Reply) string { return fmt.Sprintf("%v", rep.Data) })
	case "snapshot":
		r := &core.Request{Type: core.ReqSnapshot, Name: argStr(d, "name", ""), Tag: argStr(d, "tag", "")}
		return sc.do(d, r, func(rep core.Reply) string {
			return fmt.Sprintf("snapshot %06x, working VDI %06x", rep.Snap, rep.VID)
		})
	case "clone":
		r := &core.Request{Type: core.ReqClone, VID: sc.vid(d), Name: argStr(d, "to", "")}
		return sc.do(d, r, func(rep core.Reply) string { return fmt.Sprintf("clone %06x", rep.VID) })
	case "rollback":
		r := &core.Request{Type: core.ReqRollback, VID: sc.vid(d), Name: argStr(d, "name", "")}
		return sc.do(d, r, func(rep core.Reply) string { return fmt.Sprintf("working VDI %06x", rep.VID) })
	case "flatten":
		return sc.do(d, &core.Request{Type: core.ReqFlatten, VID: sc.vid(d)}, nil)
	case "delete":
		r := &core.Request{Type: core.ReqDeleteVDI, Name: argStr(d, "name", ""), Tag: argStr(d, "snap", ""), Force: d.HasArg("force")}
		if id, err := strconv.Atoi(r.Tag); err == nil {
			r.Tag, r.Snap = "", uint32(id)
		}
		return sc.do(d, r, nil)
	case "table":
		return sc.do(d, &core.Request{Type: core.ReqTable, VID: sc.vid(d), Exact: true}, func(rep core.Reply) string {
			var parts []string
			for i := 0; i+4 <= len(rep.Data); i += 4 {
				if e := binary.LittleEndian.Uint32(rep.Data[i:]); e != 0 {
					parts = append(parts, fmt.Sprintf("%d→%06x", i/4, e))
				}
			}
			if len(parts) == 0 {
				return "all own"
			}
			return strings.Join(parts, " ")
		})
	case "list":
		return sc.list()
	case "objects":
		return sc.objects()
	case "crash":
		sc.h.Crash(argInt(d, "node", 0))
		return "ok"
	case "restart":
		sc.h.Restart(argInt(d, "node", 0))
		return "ok"
	case "cut":
		sc.h.Cut(argInt(d, "a", 0), argInt(d, "b", 1))
		return "ok"
	case "heal":
		sc.h.Heal()
		return "ok"
	case "run":
		sc.h.Run(int64(argInt(d, "ms", 100)) * 1000)
		return "ok"
	case "wait":
		sc.h.RunUntil(func() bool {
			for _, p := range sc.pending {
				if !p.done {
					return false
				}
			}
			return true
		}, 60_000_000)
		var out []string
		for _, p := range sc.pending {
			if !p.done {
				p.out = "no reply"
			}
			out = append(out, p.what+": "+p.out)
		}
		sc.pending = nil
		return strings.Join(out, "\n")
	case "stabilize":
		if !sc.h.Stabilize() {
			return "did not converge"
		}
		if ps := sc.h.Problems(); len(ps) > 0 {
			return strings.Join(ps, "\n")
		}
		return "ok"
	}
	d.Fatalf(t, "unknown command %q", d.Cmd)
	return ""
}

// do sends r to the node the command names (node=N, default 0); with
// "async" it returns at once and 'wait' prints the outcome later.
func (sc *scenario) do(d *datadriven.TestData, r *core.Request, show func(core.Reply) string) string {
	format := func(rep core.Reply) string {
		if rep.Code != core.OK || show == nil {
			return rep.Code.String()
		}
		return show(rep)
	}
	node := argInt(d, "node", 0)
	if d.HasArg("async") {
		p := &asyncOp{what: d.Pos}
		if i := strings.LastIndex(d.Pos, ":"); i >= 0 {
			p.what = d.Cmd + " (line " + d.Pos[i+1:] + ")"
		}
		sc.pending = append(sc.pending, p)
		sc.h.Submit(node, r, func(rep core.Reply) { p.done, p.out = true, format(rep) })
		return "submitted"
	}
	rep, ok := sc.h.Request(node, r)
	if !ok {
		return "no reply"
	}
	return format(rep)
}

// vid resolves name= (and snap=TAG|ID) to a VDI id, as the newest
// cluster state has them; vid=HEX names one outright (the VDI a node that
// lags behind still knows by the name).
func (sc *scenario) vid(d *datadriven.TestData) uint32 {
	if d.HasArg("vid") {
		id, err := strconv.ParseUint(argStr(d, "vid", ""), 16, 32)
		if err != nil {
			d.Fatalf(sc.t, "vid=%q: %v", argStr(d, "vid", ""), err)
		}
		return uint32(id)
	}
	cs := sc.h.Cluster()
	name := argStr(d, "name", "")
	if d.HasArg("snap") {
		snap := argStr(d, "snap", "")
		id, err := strconv.Atoi(snap)
		var v *core.VDI
		if err == nil {
			v = cs.LookupSnapshot(name, "", uint32(id))
		} else {
			v = cs.LookupSnapshot(name, snap, 0)
		}
		if v == nil {
			return 0xffffff // no such snapshot: the request says so
		}
		return v.ID
	}
	if v := cs.LookupVDI(name); v != nil {
		return v.ID
	}
	return 0xffffff
}

func (sc *scenario) list() string {
	cs := sc.h.Cluster()
	var out []string
	for _, v := range cs.Records() {
		var flags []string
		if v.IsSnapshot() {
			flags = append(flags, fmt.Sprintf("snapshot %d", v.SnapID))
			if v.Tag != "" {
				flags = append(flags, "tag "+v.Tag)
			}
		}
		if v.Clone {
			flags = append(flags, "clone")
		}
		if v.Table {
			flags = append(flags, "table")
		}
		if v.Building {
			flags = append(flags, "building")
		}
		if v.Deleted {
			flags = append(flags, "deleted")
		}
		parent := "-"
		if v.Parent != 0 {
			parent = fmt.Sprintf("%06x", v.Parent)
		}
		out = append(out, fmt.Sprintf("%06x %s parent=%s %s", v.ID, v.Name, parent, strings.Join(flags, ", ")))
	}
	if len(out) == 0 {
		return "no VDIs"
	}
	return strings.Join(out, "\n")
}

// objects lists every stored object with the number of nodes holding it.
func (sc *scenario) objects() string {
	count := map[core.OID]int{}
	for _, objs := range sc.h.StoredObjects() {
		for _, oid := range objs {
			count[oid]++
		}
	}
	oids := make([]core.OID, 0, len(count))
	for oid := range count {
		oids = append(oids, oid)
	}
	slices.Sort(oids)
	var out []string
	for _, oid := range oids {
		kind := "data"
		if oid.IsTable() {
			kind = "table"
		}
		out = append(out, fmt.Sprintf("%06x %s %d ×%d", oid.VID(), kind, oid.Index(), count[oid]))
	}
	if len(out) == 0 {
		return "no objects"
	}
	return strings.Join(out, "\n")
}

// pattern is n bytes whose 8-byte words all hold value.
func pattern(n, value uint64) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], value)
	}
	return b
}

// blocks describes data as runs of blocks holding the same value.
func blocks(data []byte, off uint64) string {
	var out []string
	first := off / blockSize
	start, cur := uint64(0), uint64(0)
	flush := func(end uint64) {
		if end == start {
			return
		}
		r := fmt.Sprintf("%d", first+start)
		if end-start > 1 {
			r = fmt.Sprintf("%d-%d", first+start, first+end-1)
		}
		out = append(out, fmt.Sprintf("%s: %#x", r, cur))
	}
	n := uint64(len(data)) / blockSize
	for b := uint64(0); b < n; b++ {
		blk := data[b*blockSize : (b+1)*blockSize]
		v := binary.LittleEndian.Uint64(blk)
		if !slices.Equal(blk, pattern(blockSize, v)) {
			v = 0xbad
		}
		if b == 0 || v != cur {
			flush(b)
			start, cur = b, v
		}
	}
	flush(n)
	return strings.Join(out, ", ")
}

func argStr(d *datadriven.TestData, key, def string) string {
	for _, a := range d.CmdArgs {
		if a.Key == key && len(a.Vals) > 0 {
			return a.Vals[0]
		}
	}
	return def
}

func argInt(d *datadriven.TestData, key string, def int) int {
	s := argStr(d, key, "")
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		panic(fmt.Sprintf("%s: %s=%q is not a number", d.Pos, key, s))
	}
	return v
}

// argSize reads a size with an optional K suffix.
func argSize(d *datadriven.TestData, key string, def uint64) uint64 {
	s := argStr(d, key, "")
	if s == "" {
		return def
	}
	mul := uint64(1)
	if strings.HasSuffix(s, "K") {
		s, mul = strings.TrimSuffix(s, "K"), 1024
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		panic(fmt.Sprintf("%s: %s=%q is not a size", d.Pos, key, s))
	}
	return v * mul
}
