package main

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
)

// `vdi list` and `vdi tree` in the text forms of Sheepdog's `dog vdi
// list` and `dog vdi tree` (dog/vdi.c, dog/treeview.c), as pure functions
// of the VDI records, so that they are tested against hand-made output.

// vdiUsage is what a VDI's objects take, in bytes: its own (Used) and
// those it shares with its ancestors (Shared).
type vdiUsage struct{ Used, Shared uint64 }

// vdiListHeader is dog's header, Block Size Shift included.
const vdiListHeader = "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift\n"

// strnumber prints a size as dog does: in MB and up, one decimal below 10.
func strnumber(v uint64) string {
	units := []string{"MB", "GB", "TB", "PB", "EB", "ZB", "YB"}
	f := float64(v) / (1 << 20)
	i := 0
	for i < len(units)-1 && f >= 1024 {
		i++
		f /= 1024
	}
	if f >= 10 {
		return fmt.Sprintf("%.0f %s", f, units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// vdiMark is the first column of a row: s for a snapshot, c for a clone
// that still shares its parent's objects (dog: snap id 1 with a parent).
func vdiMark(v *core.VDI) byte {
	switch {
	case v.IsSnapshot():
		return 's'
	case v.Clone && v.Parent != 0:
		return 'c'
	}
	return ' '
}

// vdiListText is `vdi list`: every live VDI and snapshot in VDI id order;
// Id is the snapshot id (0 for a working VDI); Creation time in loc.
func vdiListText(vdis []core.VDI, usage map[uint32]vdiUsage, loc *time.Location) string {
	vs := slices.Clone(vdis)
	slices.SortFunc(vs, func(a, b core.VDI) int { return cmp.Compare(a.ID, b.ID) })
	var b strings.Builder
	b.WriteString(vdiListHeader)
	for i := range vs {
		v := &vs[i]
		if v.Deleted {
			continue
		}
		snap := uint32(0)
		if v.IsSnapshot() {
			snap = v.SnapID
		}
		u := usage[v.ID]
		fmt.Fprintf(&b, "%c %-8s %5d %7s %7s %7s %s  %7x %6d %13s %3d\n",
			vdiMark(v), v.Name, snap, strnumber(v.Size), strnumber(u.Used), strnumber(u.Shared),
			time.Unix(v.CTime, 0).In(loc).Format("2006-01-02 15:04"), v.ID, v.Copies, v.Tag, v.BlockShift)
	}
	return b.String()
}

// vdiTreeNode is one VDI of `vdi tree` (its --json form).
type vdiTreeNode struct {
	Name     string         `json:"name"`
	VID      uint32         `json:"vdi_id"`
	SnapID   uint32         `json:"snap_id,omitempty"`
	Tag      string         `json:"tag,omitempty"`
	SnapTime int64          `json:"snap_time,omitempty"` // snapshots: when taken (unix seconds)
	Current  bool           `json:"current,omitempty"`   // a working VDI ("you are here")
	Children []*vdiTreeNode `json:"children"`
}

// buildVDITree arranges the live VDIs of records in trees as dog does: a
// VDI hangs under its parent if that has the same name, else (a clone,
// or a VDI made from nothing) it starts a tree of its own. A deleted
// VDI that is not purged yet is skipped: its children hang under its
// parent, as they will once it is purged. Trees and children are in VDI
// id order.
func buildVDITree(records []core.VDI) []*vdiTreeNode {
	rec := map[uint32]*core.VDI{}
	for i := range records {
		rec[records[i].ID] = &records[i]
	}
	vids := make([]uint32, 0, len(rec))
	for vid, v := range rec {
		if !v.Deleted {
			vids = append(vids, vid)
		}
	}
	slices.Sort(vids)
	nodes := map[uint32]*vdiTreeNode{}
	for _, vid := range vids {
		v := rec[vid]
		n := &vdiTreeNode{Name: v.Name, VID: v.ID, Current: !v.IsSnapshot(), Children: []*vdiTreeNode{}}
		if v.IsSnapshot() {
			n.SnapID, n.Tag, n.SnapTime = v.SnapID, v.Tag, v.SnapTime
		}
		nodes[vid] = n
	}
	var roots []*vdiTreeNode
	for _, vid := range vids {
		v := rec[vid]
		p := v.Parent
		for steps := 0; p != 0 && rec[p] != nil && rec[p].Deleted && steps <= len(rec); steps++ {
			p = rec[p].Parent
		}
		if pn := nodes[p]; p != 0 && pn != nil && pn.Name == v.Name && p != vid {
			pn.Children = append(pn.Children, nodes[vid])
			continue
		}
		roots = append(roots, nodes[vid])
	}
	return roots
}

// treeLabel is how dog labels a VDI in the tree: a snapshot by the time
// it was taken, the working VDI as "(you are here)".
func treeLabel(n *vdiTreeNode, loc *time.Location) string {
	if n.Current {
		return "(you are here)"
	}
	return time.Unix(n.SnapTime, 0).In(loc).Format("[2006-01-02 15:04]")
}

// vdiTreeText draws the trees as dog's treeview does: a tree's line
// starts with the name; one child joins with "---", several with "-+-",
// the next ones on lines of their own under it with "|-" and the last
// with "`-".
func vdiTreeText(roots []*vdiTreeNode, loc *time.Location) string {
	var b strings.Builder
	var width []int
	var more []bool
	at := func(level int) {
		for len(width) <= level {
			width = append(width, 0)
			more = append(more, false)
		}
	}
	var dump func(n *vdiTreeNode, level int, first, last bool)
	dump = func(n *vdiTreeNode, level int, first, last bool) {
		at(level)
		switch {
		case first && last:
			b.WriteString("---")
		case first:
			b.WriteString("-+-")
		default:
			for lvl := 0; lvl < level-1; lvl++ {
				b.WriteString(strings.Repeat(" ", width[lvl]+1))
				if more[lvl+1] {
					b.WriteString("| ")
				} else {
					b.WriteString("  ")
				}
			}
			b.WriteString(strings.Repeat(" ", width[level-1]+1))
			if last {
				b.WriteString("`-")
			} else {
				b.WriteString("|-")
			}
		}
		label := treeLabel(n, loc)
		b.WriteString(label)
		if len(n.Children) == 0 {
			b.WriteByte('\n')
			return
		}
		more[level], width[level] = !last, len(label)
		for i, c := range n.Children {
			dump(c, level+1, i == 0, i == len(n.Children)-1)
		}
	}
	for _, r := range roots {
		at(0)
		b.WriteString(r.Name)
		more[0], width[0] = false, len(r.Name)
		dump(r, 1, true, true)
	}
	return b.String()
}
