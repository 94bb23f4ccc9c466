package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sheepdog-go/sheepdog/daemon"
	sdnet "github.com/sheepdog-go/sheepdog/net"
)

const defaultAddr = "127.0.0.1:7000"

// callJSON sends one admin request and decodes the JSON answer.
func callJSON[T any](ctx context.Context, addr string, r *daemon.AdminRequest) (T, error) {
	cfg, err := clientTLS(adminTLSDir)
	if err != nil {
		var zero T
		return zero, err
	}
	return callJSONTLS[T](ctx, addr, cfg, r)
}

// callJSONTLS is callJSON over TLS with cfg (nil: plain TCP).
func callJSONTLS[T any](ctx context.Context, addr string, cfg *tls.Config, r *daemon.AdminRequest) (T, error) {
	var out T
	b, err := callTLS(ctx, addr, cfg, r)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return out, fmt.Errorf("bad answer from %s: %w", addr, err)
	}
	return out, nil
}

// call sends one admin request, over TLS with the certificate of
// --tls-dir when it is given.
func call(ctx context.Context, addr string, r *daemon.AdminRequest) ([]byte, error) {
	cfg, err := clientTLS(adminTLSDir)
	if err != nil {
		return nil, err
	}
	return callTLS(ctx, addr, cfg, r)
}

func callTLS(ctx context.Context, addr string, cfg *tls.Config, r *daemon.AdminRequest) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	c, err := sdnet.DialTLS(dctx, addr, cfg)
	if err != nil {
		// A refusal at the TLS handshake says what to do itself.
		var te *sdnet.TLSError
		if errors.As(err, &te) {
			return nil, te
		}
		return nil, fmt.Errorf("cannot reach a sheep at %s (is it running? use -a HOST:PORT): %w", addr, err)
	}
	defer c.Close()
	req, _ := json.Marshal(r)
	b, err := c.Call(ctx, req)
	if err != nil {
		var re *sdnet.RemoteError
		if errors.As(err, &re) {
			return nil, errors.New(re.Msg)
		}
		return nil, err
	}
	return b, nil
}

// adminFlags adds the flags every admin command has.
func adminFlags(addr *string, asJSON *bool) func(fs *flag.FlagSet) {
	return func(fs *flag.FlagSet) {
		fs.StringVar(addr, "a", defaultAddr, "address of a sheep (host:port)")
		fs.StringVar(addr, "address", defaultAddr, "same as -a")
		fs.StringVar(&adminTLSDir, "tls-dir", "", "TLS directory with a client certificate of the cluster CA (sheepdog certs client), for a cluster under TLS")
		if asJSON != nil {
			fs.BoolVar(asJSON, "json", false, "print JSON for scripts")
		}
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// parseSize reads sizes like 512, 64K, 10M, 40G, 1T (powers of 1024).
func parseSize(s string) (uint64, error) {
	s = strings.TrimSpace(strings.ToUpper(s))
	s = strings.TrimSuffix(strings.TrimSuffix(s, "B"), "I")
	mult := uint64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		}
		if mult > 1 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || s == "" {
		return 0, fmt.Errorf("invalid size %q (use a number with an optional K, M, G or T suffix)", s)
	}
	if v > (1<<64-1)/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return v * mult, nil
}

// sizeStr prints a size as dog does ("4.0 GB").
func sizeStr(v uint64) string {
	units := []string{"B", "KB", "MB", "GB", "TB", "PB"}
	f := float64(v)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", v)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

func clusterCommand() *command {
	var addr string
	var asJSON bool
	var copies, shift int
	return &command{
		name:  "cluster",
		short: "format, inspect or shut down the cluster",
		subs: []*command{
			{
				name: "format", short: "format the cluster (copies and object size)",
				flags: func(fs *flag.FlagSet) {
					adminFlags(&addr, nil)(fs)
					fs.IntVar(&copies, "copies", 3, "replicas per object (default for VDIs)")
					fs.IntVar(&shift, "block-size-shift", 22, "object size as a power of two (22 = 4 MiB)")
				},
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) > 0 {
						return usagef("cluster format takes no arguments")
					}
					if _, err := call(ctx, addr, &daemon.AdminRequest{Cmd: "cluster.format", Copies: copies, BlockShift: shift}); err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "cluster formatted: %d copies, %s objects\n", copies, sizeStr(1<<shift))
					return nil
				},
			},
			{
				name: "info", short: "show the cluster state and epoch history",
				flags: adminFlags(&addr, &asJSON),
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) > 0 {
						return usagef("cluster info takes no arguments")
					}
					ci, err := callJSON[daemon.ClusterInfo](ctx, addr, &daemon.AdminRequest{Cmd: "cluster.info"})
					if err != nil {
						return err
					}
					if asJSON {
						return printJSON(e.stdout, ci)
					}
					state := "running"
					switch {
					case ci.Shutdown:
						state = "shutting down"
					case !ci.Formatted:
						state = "waiting for format"
					}
					fmt.Fprintf(e.stdout, "Cluster status: %s, auto-recovery enabled\n\n", state)
					if ci.Formatted {
						fmt.Fprintf(e.stdout, "Cluster created at %s, %d copies, %s objects\n\n", time.Unix(ci.CTime, 0).Format(time.ANSIC), ci.Copies, sizeStr(1<<ci.BlockShift))
					}
					fmt.Fprintf(e.stdout, "Epoch %d, leader %s, voters %s\n\n", ci.Epoch, ci.Leader, strings.Join(ci.Voters, " "))
					tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "Epoch\tTime\tNodes")
					for i := len(ci.History) - 1; i >= 0; i-- {
						h := ci.History[i]
						fmt.Fprintf(tw, "%d\t%s\t[%s]\n", h.Epoch, time.Unix(h.Time, 0).Format("2006-01-02 15:04:05"), strings.Join(h.Nodes, ", "))
					}
					return tw.Flush()
				},
			},
			{
				name: "shutdown", short: "stop every node of the cluster cleanly",
				flags: adminFlags(&addr, nil),
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) > 0 {
						return usagef("cluster shutdown takes no arguments")
					}
					if _, err := call(ctx, addr, &daemon.AdminRequest{Cmd: "cluster.shutdown"}); err != nil {
						return err
					}
					fmt.Fprintln(e.stdout, "cluster shutting down")
					return nil
				},
			},
		},
	}
}

func nodeCommand() *command {
	var addr string
	var asJSON bool
	return &command{
		name:  "node",
		short: "list and inspect nodes",
		subs: []*command{
			{
				name: "list", short: "list the members of the current epoch",
				flags: adminFlags(&addr, &asJSON),
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) > 0 {
						return usagef("node list takes no arguments")
					}
					rows, err := callJSON[[]daemon.NodeRow](ctx, addr, &daemon.AdminRequest{Cmd: "node.list"})
					if err != nil {
						return err
					}
					if asJSON {
						return printJSON(e.stdout, rows)
					}
					tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
					fmt.Fprintln(tw, "Id\tHost:Port\tV-Nodes\tZone\tNBD\t")
					for _, r := range rows {
						nbd := r.NBD
						if nbd == "" {
							nbd = "-"
						}
						fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t\n", r.Index, r.Addr, r.VNodes, r.Zone, nbd)
					}
					return tw.Flush()
				},
			},
			{
				name: "info", short: "show the node's storage and state",
				flags: adminFlags(&addr, &asJSON),
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) > 0 {
						return usagef("node info takes no arguments")
					}
					st, err := callJSON[daemon.NodeStatus](ctx, addr, &daemon.AdminRequest{Cmd: "node.info"})
					if err != nil {
						return err
					}
					if asJSON {
						return printJSON(e.stdout, st)
					}
					tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "Id\tSize\tUsed\tAvail\tUse\tObjects\tEpoch\tState")
					total := st.Used + st.Free
					pct := 0.0
					if total > 0 {
						pct = 100 * float64(st.Used) / float64(total)
					}
					state := "serving"
					if !st.Serving {
						state = "joining"
					}
					if st.Leader {
						state += ", leader"
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.0f%%\t%d\t%d\t%s\n", st.Index, sizeStr(total), sizeStr(st.Used), sizeStr(st.Free), pct, st.Objects, st.Epoch, state)
					if err := tw.Flush(); err != nil {
						return err
					}
					fmt.Fprintln(e.stdout, raftLine(st.Raft))
					return nil
				},
			},
			{
				name: "recovery", short: "show recovery progress on every node",
				flags: adminFlags(&addr, &asJSON),
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) > 0 {
						return usagef("node recovery takes no arguments")
					}
					rows, err := callJSON[[]daemon.NodeStatus](ctx, addr, &daemon.AdminRequest{Cmd: "node.recovery"})
					if err != nil {
						return err
					}
					if asJSON {
						return printJSON(e.stdout, rows)
					}
					return printRecovery(e.stdout, rows)
				},
			},
		},
	}
}

func vdiCommand() *command {
	var addr string
	var asJSON, prealloc bool
	var copies, shift int
	c := &command{
		name:  "vdi",
		short: "create, list, snapshot, clone, read, write, check and delete VDIs",
		subs: []*command{
			{
				name: "create", usage: "NAME SIZE", short: "create a VDI (thin provisioned unless --prealloc)",
				flags: func(fs *flag.FlagSet) {
					adminFlags(&addr, nil)(fs)
					fs.IntVar(&copies, "copies", 0, "replicas per object (default: the cluster's)")
					fs.IntVar(&shift, "block-size-shift", 0, "object size as a power of two (default: the cluster's)")
					fs.BoolVar(&prealloc, "prealloc", false, "allocate every object now")
				},
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) != 2 {
						return usagef("vdi create needs NAME and SIZE")
					}
					size, err := parseSize(args[1])
					if err != nil {
						return usagef("%v", err)
					}
					out, err := callJSON[map[string]uint32](ctx, addr, &daemon.AdminRequest{Cmd: "vdi.create", Name: args[0], Size: size, Copies: copies, BlockShift: shift, Prealloc: prealloc})
					if err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "VDI %s created: %s, id %06x\n", args[0], sizeStr(size), out["vid"])
					return nil
				},
			},
			{
				name: "resize", usage: "NAME SIZE", short: "grow a VDI",
				flags: adminFlags(&addr, nil),
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) != 2 {
						return usagef("vdi resize needs NAME and SIZE")
					}
					size, err := parseSize(args[1])
					if err != nil {
						return usagef("%v", err)
					}
					_, err = call(ctx, addr, &daemon.AdminRequest{Cmd: "vdi.resize", Name: args[0], Size: size})
					return err
				},
			},
			{
				name: "check", usage: "NAME", short: "verify every object's replicas and repair the bad ones",
				flags: adminFlags(&addr, &asJSON),
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) != 1 {
						return usagef("vdi check needs NAME")
					}
					cr, err := callJSON[daemon.CheckReport](ctx, addr, &daemon.AdminRequest{Cmd: "vdi.check", Name: args[0]})
					if err != nil {
						return err
					}
					if asJSON {
						if err := printJSON(e.stdout, cr); err != nil {
							return err
						}
					} else {
						fmt.Fprintf(e.stdout, "checked %s: %d objects, %d allocated, %d with %d identical replicas, %d replicas repaired\n",
							cr.Name, cr.Objects, cr.Allocated, cr.Replicated, cr.Copies, cr.Repaired)
						for _, p := range cr.Problems {
							fmt.Fprintln(e.stdout, "  "+p)
						}
					}
					if len(cr.Problems) > 0 || cr.Replicated != cr.Allocated {
						return fmt.Errorf("%s: %d of %d objects lack full redundancy", cr.Name, cr.Allocated-cr.Replicated, cr.Allocated)
					}
					return nil
				},
			},
		},
	}
	// create, the lifecycle (vdisnap.go), then resize, read and write
	// (vdiio.go), check.
	byName := map[string]*command{}
	for _, sub := range c.subs {
		byName[sub.name] = sub
	}
	subs := []*command{byName["create"]}
	subs = append(subs, vdiLifecycleCommands()...)
	c.subs = append(subs, byName["resize"], vdiReadCommand(), vdiWriteCommand(), byName["check"])
	return c
}

func rangeArgs(cmd string, args []string) (string, uint64, *uint64, error) {
	if len(args) < 1 || len(args) > 3 {
		return "", 0, nil, usagef("%s needs NAME [OFFSET [LEN]]", cmd)
	}
	var off uint64
	var length *uint64
	if len(args) > 1 {
		v, err := parseSize(args[1])
		if err != nil {
			return "", 0, nil, usagef("offset: %v", err)
		}
		off = v
	}
	if len(args) > 2 {
		v, err := parseSize(args[2])
		if err != nil {
			return "", 0, nil, usagef("length: %v", err)
		}
		length = &v
	}
	return args[0], off, length, nil
}

// raftLine says in one line where the node stands in the cluster log's
// elections: what to look at first when a cluster has no leader.
func raftLine(r daemon.RaftRow) string {
	lead := "no leader known"
	if r.Lead != "" {
		lead = "leader " + r.Lead
		if r.HeardLeader >= 0 {
			lead += fmt.Sprintf(" (heard %d ticks ago)", r.HeardLeader)
		}
	}
	return fmt.Sprintf("Cluster log: term %d, %s, %s, voters %s", r.Term, strings.TrimPrefix(r.State, "State"), lead, strings.Join(r.Voters, " "))
}

// printRecovery prints `node recovery`: per node the objects and bytes
// fetched of this epoch's recovery, the rate over the last seconds, the
// time left at that rate, and how the node paces it.
func printRecovery(w io.Writer, rows []daemon.NodeStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "Id\tHost:Port\tEpoch\tProgress\tObjects\tData\tRate\tETA\tState")
	for _, r := range rows {
		state := "done"
		switch {
		case strings.HasPrefix(r.Dir, "unreachable"):
			fmt.Fprintf(tw, "%d\t%s\t-\t-\t-\t-\t-\t-\t%s\n", r.Index, r.Addr, r.Dir)
			continue
		case r.Listing:
			state = "collecting object lists"
		case !r.Finished:
			state = "recovering"
		case !r.AllDone:
			state = "done, waiting for the others"
		}
		if !r.Finished && r.Yielding {
			state += fmt.Sprintf(" (clients busy: at most %s/s)", sizeStr(uint64(r.Cap)))
		} else if !r.Finished && r.Cap > 0 {
			state += fmt.Sprintf(" (at most %s/s)", sizeStr(uint64(r.Cap)))
		}
		prog, objs, data := "100%", "-", "-"
		if r.Total > 0 {
			done := r.Total - r.Remaining
			prog = fmt.Sprintf("%.1f%%", 100*float64(done)/float64(r.Total))
			objs = fmt.Sprintf("%d/%d", done, r.Total)
			data = fmt.Sprintf("%s/%s", sizeStr(r.BytesTotal-r.BytesRemaining), sizeStr(r.BytesTotal))
		}
		rate, eta := "-", "-"
		if r.Rate > 0 && !r.Finished {
			rate = fmt.Sprintf("%.1f MiB/s", r.Rate/(1<<20))
		}
		if r.ETA > 0 {
			eta = time.Duration(r.ETA * float64(time.Second)).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Index, r.Addr, r.Epoch, prog, objs, data, rate, eta, state)
	}
	return tw.Flush()
}
