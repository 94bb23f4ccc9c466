package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/daemon"
)

// The VDI lifecycle commands: list, tree, snapshot, clone, rollback,
// flatten, delete, and read (of a snapshot too).

// snapRef reads a -s argument: a snapshot id (a number) or a tag.
func snapRef(s string) (tag string, id uint32, err error) {
	if s == "" {
		return "", 0, nil
	}
	if strings.Trim(s, "0123456789") != "" {
		return s, 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 {
		return "", 0, usagef("the snapshot id must be larger than zero (got %q)", s)
	}
	return "", uint32(n), nil
}

// snapLabel names a snapshot of name for messages: NAME@TAG or NAME@ID.
func snapLabel(name, tag string, id uint32) string {
	if tag != "" {
		return name + "@" + tag
	}
	return fmt.Sprintf("%s@%d", name, id)
}

func snapFlag(ref *string, what string) func(fs *flag.FlagSet) {
	return func(fs *flag.FlagSet) {
		fs.StringVar(ref, "s", "", what)
		fs.StringVar(ref, "snapshot", "", "same as -s")
	}
}

func withFlags(fns ...func(fs *flag.FlagSet)) func(fs *flag.FlagSet) {
	return func(fs *flag.FlagSet) {
		for _, f := range fns {
			f(fs)
		}
	}
}

// listLocation is the time zone `vdi list` and `vdi tree` print times in:
// the local one, as dog does (TZ=UTC for UTC).
var listLocation = time.Local

func vdiLifecycleCommands() []*command {
	var addr, ref string
	var asJSON, noShare, force bool
	return []*command{
		{
			name: "list", short: "list VDIs and snapshots (as dog vdi list)",
			long: `Columns as Sheepdog's dog vdi list: a first column "s" for a snapshot and
"c" for a clone; Id is the snapshot id (0 for the working VDI); Used is
what its own objects take, Shared what it shares with the VDIs it was made
from. Rows are in VDI id order; times are local (set TZ for another zone).`,
			flags: adminFlags(&addr, &asJSON),
			run: func(ctx context.Context, e *env, args []string) error {
				if len(args) > 0 {
					return usagef("vdi list takes no arguments")
				}
				rows, err := callJSON[[]daemon.VDIRow](ctx, addr, &daemon.AdminRequest{Cmd: "vdi.list"})
				if err != nil {
					return err
				}
				if asJSON {
					if rows == nil {
						rows = []daemon.VDIRow{}
					}
					return printJSON(e.stdout, rows)
				}
				vdis := make([]core.VDI, len(rows))
				usage := map[uint32]vdiUsage{}
				for i, r := range rows {
					vdis[i] = r.Record()
					usage[r.ID] = vdiUsage{Used: r.Used, Shared: r.Shared}
				}
				_, err = io.WriteString(e.stdout, vdiListText(vdis, usage, listLocation))
				return err
			},
		},
		{
			name: "tree", short: "show the snapshot trees (as dog vdi tree)",
			long: `Each VDI's snapshots on one line from the oldest, as Sheepdog's dog vdi
tree: a snapshot as the time it was taken, [YYYY-MM-DD HH:MM] (local time;
set TZ for another zone), the working VDI as "(you are here)". A snapshot
with several children (after a rollback) branches with -+-, |- and ` + "`" + `-.
A clone starts a line of its own. --json gives the nested trees, with
snapshot ids and tags.`,
			flags: adminFlags(&addr, &asJSON),
			run: func(ctx context.Context, e *env, args []string) error {
				if len(args) > 0 {
					return usagef("vdi tree takes no arguments")
				}
				rows, err := callJSON[[]daemon.VDIRow](ctx, addr, &daemon.AdminRequest{Cmd: "vdi.records"})
				if err != nil {
					return err
				}
				recs := make([]core.VDI, len(rows))
				for i, r := range rows {
					recs[i] = r.Record()
				}
				roots := buildVDITree(recs)
				if asJSON {
					if roots == nil {
						roots = []*vdiTreeNode{}
					}
					return printJSON(e.stdout, roots)
				}
				_, err = io.WriteString(e.stdout, vdiTreeText(roots, listLocation))
				return err
			},
		},
		{
			name: "snapshot", usage: "NAME", short: "snapshot a VDI (prints the snapshot id)",
			long: `The snapshot is read-only and keeps the VDI's contents of now; the VDI goes
on (a client attached to it keeps writing, to the VDI, not the snapshot).
Read it over NBD as export NAME@TAG or NAME@ID.`,
			flags: withFlags(adminFlags(&addr, &asJSON), snapFlag(&ref, "a tag for the snapshot (not a number)")),
			run: func(ctx context.Context, e *env, args []string) error {
				if len(args) != 1 {
					return usagef("vdi snapshot needs NAME")
				}
				if ref != "" && strings.Trim(ref, "0123456789") == "" {
					return usagef("snapshot tag %q is a number, which would read as a snapshot id: use a name", ref)
				}
				info, err := callJSON[daemon.SnapshotInfo](ctx, addr, &daemon.AdminRequest{Cmd: "vdi.snapshot", Name: args[0], Tag: ref})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(e.stdout, info)
				}
				fmt.Fprintln(e.stdout, info.SnapID)
				return nil
			},
		},
		{
			name: "clone", usage: "SRC DST", short: "make a writable VDI from a snapshot of SRC",
			long: `The clone shares the snapshot's objects until it writes them (copy-on-write);
with --no-share it is flattened at once, so that it depends on nothing.`,
			flags: withFlags(adminFlags(&addr, nil), snapFlag(&ref, "the snapshot of SRC: its tag or id (required)"), func(fs *flag.FlagSet) {
				fs.BoolVar(&noShare, "no-share", false, "copy every object now: the clone shares nothing with the snapshot")
				fs.BoolVar(&noShare, "n", false, "same as --no-share")
			}),
			run: func(ctx context.Context, e *env, args []string) error {
				if len(args) != 2 {
					return usagef("vdi clone needs -s SNAPSHOT, SRC and DST")
				}
				tag, id, err := snapRef(ref)
				if err != nil {
					return err
				}
				if tag == "" && id == 0 {
					return usagef("vdi clone needs -s TAG or -s ID: clones are made from snapshots")
				}
				out, err := callJSON[map[string]uint32](ctx, addr, &daemon.AdminRequest{Cmd: "vdi.clone", Name: args[0], Tag: tag, Snap: id, Dst: args[1]})
				if err != nil {
					return err
				}
				if noShare {
					if _, err := flatten(ctx, e, addr, args[1]); err != nil {
						return fmt.Errorf("VDI %s cloned (id %06x), but it still shares objects with %s: %w", args[1], out["vid"], snapLabel(args[0], tag, id), err)
					}
				}
				fmt.Fprintf(e.stdout, "VDI %s cloned from %s: id %06x\n", args[1], snapLabel(args[0], tag, id), out["vid"])
				return nil
			},
		},
		{
			name: "rollback", usage: "NAME", short: "make a VDI read as one of its snapshots again",
			long: `The VDI (not attached anywhere) becomes a new VDI made from the snapshot;
later snapshots stay (the tree branches).`,
			flags: withFlags(adminFlags(&addr, nil), snapFlag(&ref, "the snapshot: its tag or id (required)")),
			run: func(ctx context.Context, e *env, args []string) error {
				if len(args) != 1 {
					return usagef("vdi rollback needs -s SNAPSHOT and NAME")
				}
				tag, id, err := snapRef(ref)
				if err != nil {
					return err
				}
				if tag == "" && id == 0 {
					return usagef("vdi rollback needs -s TAG or -s ID")
				}
				out, err := callJSON[map[string]uint32](ctx, addr, &daemon.AdminRequest{Cmd: "vdi.rollback", Name: args[0], Tag: tag, Snap: id})
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "VDI %s rolled back to %s: id %06x\n", args[0], snapLabel(args[0], tag, id), out["vid"])
				return nil
			},
		},
		{
			name: "flatten", usage: "NAME", short: "copy every object a VDI shares, so that it depends on no snapshot",
			long: `Runs online at the node that has the VDI attached (its clients keep
writing), or here, attaching it meanwhile, if no node has. Progress goes
to stderr; the command returns when it is done.`,
			flags: adminFlags(&addr, nil),
			run: func(ctx context.Context, e *env, args []string) error {
				if len(args) != 1 {
					return usagef("vdi flatten needs NAME")
				}
				info, err := flatten(ctx, e, addr, args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "VDI %s flattened: %d shared objects copied\n", args[0], info.Copied)
				return nil
			},
		},
		{
			name: "delete", usage: "NAME", short: "delete a VDI, or one of its snapshots with -s, and free its objects",
			flags: withFlags(adminFlags(&addr, nil), snapFlag(&ref, "delete this snapshot (tag or id) instead of the VDI"), func(fs *flag.FlagSet) {
				fs.BoolVar(&force, "force", false, "delete even if attached")
			}),
			run: func(ctx context.Context, e *env, args []string) error {
				if len(args) != 1 {
					return usagef("vdi delete needs NAME")
				}
				tag, id, err := snapRef(ref)
				if err != nil {
					return err
				}
				_, err = call(ctx, addr, &daemon.AdminRequest{Cmd: "vdi.delete", Name: args[0], Tag: tag, Snap: id, Force: force})
				return err
			},
		},
	}
}

// flatten flattens the VDI name and waits for the end, showing progress
// on stderr. The node that runs it (the attacher) answers its status.
func flatten(ctx context.Context, e *env, addr, name string) (daemon.FlattenInfo, error) {
	info, err := callJSON[daemon.FlattenInfo](ctx, addr, &daemon.AdminRequest{Cmd: "vdi.flatten", Name: name})
	if err != nil {
		return info, err
	}
	shown := false
	for !info.Done {
		fmt.Fprintf(e.stderr, "\rflattening %s at %s: %d/%d objects, %d copied", name, info.Node, info.Scanned, info.Total, info.Copied)
		shown = true
		select {
		case <-ctx.Done():
			fmt.Fprintln(e.stderr)
			return info, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		info, err = callJSON[daemon.FlattenInfo](ctx, info.Node, &daemon.AdminRequest{Cmd: "vdi.flatten.status", VID: info.VID})
		if err != nil {
			if shown {
				fmt.Fprintln(e.stderr)
			}
			return info, err
		}
	}
	if shown {
		fmt.Fprintf(e.stderr, "\rflattening %s at %s: %d/%d objects, %d copied\n", name, info.Node, info.Scanned, info.Total, info.Copied)
	}
	if info.Error != "" {
		return info, fmt.Errorf("flatten of %s: %s", name, info.Error)
	}
	return info, nil
}
