package main

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sheepdog-go/sheepdog/core"
)

// at is a time of 2014-01-01 (UTC) as unix seconds.
func at(hour, min int) int64 { return time.Date(2014, 1, 1, hour, min, 0, 0, time.UTC).Unix() }

func TestStrnumber(t *testing.T) {
	for in, want := range map[uint64]string{
		0: "0.0 MB", 4 << 20: "4.0 MB", 16 << 20: "16 MB", 9<<20 + 512<<10: "9.5 MB", 1 << 30: "1.0 GB",
		4 << 30: "4.0 GB", 100 << 30: "100 GB", 1023 << 20: "1023 MB", 1 << 40: "1.0 TB", 12 << 40: "12 TB",
	} {
		if got := strnumber(in); got != want {
			t.Errorf("strnumber(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestVDIListText(t *testing.T) {
	const G, M = 1 << 30, 1 << 20
	tests := []struct {
		name  string
		vdis  []core.VDI
		usage map[uint32]vdiUsage
		want  []string // rows after the header
	}{
		{name: "empty", want: nil},
		{
			// The example of sheepdog-semantics.md: snapshot -s snap1 of a
			// 4 GiB VDI with one written object; then a clone of it that
			// wrote 4 objects, and a deleted VDI that is not shown.
			name: "snapshot and clone",
			vdis: []core.VDI{
				{ID: 0x7c2b27, Name: "test", Size: 4 * G, Copies: 6, BlockShift: 22, CTime: at(10, 5), Parent: 0x7c2b25, Table: true},
				{ID: 0x7c2b25, Name: "test", Size: 4 * G, Copies: 6, BlockShift: 22, CTime: at(10, 0), SnapID: 1, Tag: "snap1", SnapTime: at(10, 5)},
				{ID: 0x100, Name: "cl", Size: 4 * G, Copies: 6, BlockShift: 22, CTime: at(11, 0), Parent: 0x7c2b25, Clone: true, Table: true},
				{ID: 0x200, Name: "gone", Size: G, Copies: 3, BlockShift: 22, CTime: at(9, 0), Deleted: true},
			},
			usage: map[uint32]vdiUsage{0x7c2b25: {Used: 4 * M}, 0x7c2b27: {Shared: 4 * M}, 0x100: {Used: 16 * M, Shared: 4 * M}},
			want: []string{
				"c cl           0  4.0 GB   16 MB  4.0 MB 2014-01-01 11:00      100      6                22",
				"s test         1  4.0 GB  4.0 MB  0.0 MB 2014-01-01 10:00   7c2b25      6         snap1  22",
				"  test         0  4.0 GB  0.0 MB  4.0 MB 2014-01-01 10:05   7c2b27      6                22",
			},
		},
		{
			// A flattened clone is no clone any more (no parent), as a
			// --no-share clone in dog; a long name pushes the columns; a
			// second snapshot without a tag.
			name: "flattened clone, long name, untagged snapshots",
			vdis: []core.VDI{
				{ID: 0xabcdef, Name: "a-long-vdi-name", Size: 100 * G, Copies: 3, BlockShift: 22, CTime: at(12, 30), Clone: true},
				{ID: 0x10, Name: "db", Size: 1 << 40, Copies: 2, BlockShift: 23, CTime: at(8, 0), SnapID: 2, SnapTime: at(8, 1)},
				{ID: 0x11, Name: "db", Size: 1 << 40, Copies: 2, BlockShift: 23, CTime: at(8, 1), Parent: 0x10, Table: true},
			},
			usage: map[uint32]vdiUsage{0xabcdef: {Used: 100 * G}, 0x10: {Used: 8 * M}, 0x11: {Used: 16 * M, Shared: 1024 * M}},
			want: []string{
				"s db           2  1.0 TB  8.0 MB  0.0 MB 2014-01-01 08:00       10      2                23",
				"  db           0  1.0 TB   16 MB  1.0 GB 2014-01-01 08:01       11      2                23",
				"  a-long-vdi-name     0  100 GB  100 GB  0.0 MB 2014-01-01 12:30   abcdef      3                22",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := vdiListHeader
			for _, r := range tt.want {
				want += r + "\n"
			}
			if diff := cmp.Diff(want, vdiListText(tt.vdis, tt.usage, time.UTC)); diff != "" {
				t.Errorf("vdi list (-want +got):\n%s", diff)
			}
		})
	}
}

func TestVDITree(t *testing.T) {
	snap := func(vid, parent uint32, name string, id uint32, tag string, hour, min int) core.VDI {
		return core.VDI{ID: vid, Name: name, Parent: parent, SnapID: id, Tag: tag, SnapTime: at(hour, min), CTime: at(hour, min)}
	}
	work := func(vid, parent uint32, name string) core.VDI {
		return core.VDI{ID: vid, Name: name, Parent: parent, Table: parent != 0}
	}
	deleted := func(v core.VDI) core.VDI { v.Deleted = true; return v }
	sp := func(n int) string { return strings.Repeat(" ", n) }
	tests := []struct {
		name string
		recs []core.VDI
		want []string
	}{
		{name: "a VDI never snapshotted", recs: []core.VDI{work(5, 0, "plain")}, want: []string{"plain---(you are here)"}},
		{
			name: "a chain of snapshots",
			recs: []core.VDI{snap(1, 0, "test", 1, "", 10, 0), snap(2, 1, "test", 2, "b", 10, 5), work(3, 2, "test")},
			want: []string{"test---[2014-01-01 10:00]---[2014-01-01 10:05]---(you are here)"},
		},
		{
			// sheepdog-semantics.md's example: snapshot, snapshot, rollback
			// to the first (the working VDI of then is deleted), snapshot.
			name: "a rollback branches",
			recs: []core.VDI{
				snap(10, 0, "test2", 1, "", 10, 10), snap(11, 10, "test2", 2, "", 10, 11), deleted(work(12, 11, "test2")),
				snap(13, 10, "test2", 3, "", 10, 12), work(14, 13, "test2"),
			},
			want: []string{
				"test2---[2014-01-01 10:10]-+-[2014-01-01 10:11]",
				sp(27) + "`-[2014-01-01 10:12]---(you are here)",
			},
		},
		{
			// Branches under branches: the continuation bar of a
			// level with more siblings to come.
			name: "nested branches",
			recs: []core.VDI{
				snap(50, 0, "e", 1, "", 10, 0), snap(51, 50, "e", 2, "", 10, 1), snap(52, 51, "e", 3, "", 10, 2),
				work(53, 50, "e"), snap(54, 51, "e", 4, "", 10, 4),
			},
			want: []string{
				"e---[2014-01-01 10:00]-+-[2014-01-01 10:01]-+-[2014-01-01 10:02]",
				sp(2) + "  " + sp(19) + "| " + sp(19) + "`-[2014-01-01 10:04]",
				sp(2) + "  " + sp(19) + "`-(you are here)",
			},
		},
		{
			// A clone (another name) starts its own line; a deleted
			// snapshot in the middle of a chain is skipped; trees come in
			// VDI id order of their roots.
			name: "clones and deleted snapshots",
			recs: []core.VDI{
				snap(30, 0, "d", 1, "keep", 9, 0), deleted(snap(31, 30, "d", 2, "", 9, 30)), work(32, 31, "d"),
				{ID: 33, Name: "c", Parent: 30, Clone: true, Table: true},
				{ID: 7, Name: "z", Parent: 0},
			},
			want: []string{
				"z---(you are here)",
				"d---[2014-01-01 09:00]---(you are here)",
				"c---(you are here)",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := ""
			for _, l := range tt.want {
				want += l + "\n"
			}
			if diff := cmp.Diff(want, vdiTreeText(buildVDITree(tt.recs), time.UTC)); diff != "" {
				t.Errorf("vdi tree (-want +got):\n%s", diff)
			}
		})
	}
}

func TestVDITreeJSON(t *testing.T) {
	recs := []core.VDI{
		{ID: 10, Name: "a", SnapID: 1, Tag: "base", SnapTime: at(10, 0)},
		{ID: 12, Name: "a", Parent: 10, Table: true},
		{ID: 11, Name: "b", Parent: 10, Clone: true, Table: true},
	}
	none := []*vdiTreeNode{}
	want := []*vdiTreeNode{
		{Name: "a", VID: 10, SnapID: 1, Tag: "base", SnapTime: at(10, 0), Children: []*vdiTreeNode{
			{Name: "a", VID: 12, Current: true, Children: none},
		}},
		{Name: "b", VID: 11, Current: true, Children: none},
	}
	if diff := cmp.Diff(want, buildVDITree(recs)); diff != "" {
		t.Errorf("tree (-want +got):\n%s", diff)
	}
}
