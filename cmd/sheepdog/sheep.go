package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/daemon"
	sdnet "github.com/sheepdog-go/sheepdog/net"
	"github.com/sheepdog-go/sheepdog/sim"
)

// listFlag collects a comma-separated or repeated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

func newLogger(e *env, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level: %v", err)
	}
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: l})), nil
}

func sheepCommand() *command {
	var (
		cfg       daemon.Config
		join      listFlag
		zone      uint
		logLevel  string
		pprofAddr string
		plant     string
		tlsDir    string
		insecure  bool
		tune      tuning
		recov     recoveryFlags
	)
	return &command{
		name:  "sheep",
		short: "run a storage node in the foreground",
		long: `Runs one sheep. Without --join and with an empty --dir it starts a new
cluster; with --join it joins the cluster of that member. Restarted with the
same --dir it rejoins its cluster. SIGTERM or SIGINT stop it cleanly.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cfg.Dir, "dir", "", "data directory (required)")
			fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:7000", "peer and admin address")
			fs.StringVar(&cfg.Advertise, "advertise", "", "address the other nodes reach --listen at, when that is another (NAT, proxy, wildcard --listen; default: --listen)")
			fs.StringVar(&cfg.NBD, "nbd", "", "NBD address for QEMU and other NBD clients (none if empty)")
			fs.Var(&join, "join", "address of a member to join through (repeatable)")
			fs.UintVar(&zone, "zone", 0, "failure zone; replicas go to distinct zones (default: one zone per node)")
			fs.IntVar(&cfg.VNodes, "vnodes", 0, "virtual nodes on the ring (default: weighted by capacity)")
			fs.BoolVar(&cfg.Gateway, "gateway", false, "store no data: only serve clients")
			fs.StringVar(&cfg.Metrics, "metrics", "", "Prometheus /metrics address (none if empty)")
			fs.DurationVar(&cfg.Tick, "tick", daemon.DefaultTick, tickUsage)
			fs.StringVar(&pprofAddr, "pprof", "", "serve Go profiling (net/http/pprof) on this address")
			fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
			fs.StringVar(&tlsDir, "tls-dir", "", "TLS directory of this node (sheepdog certs node): every peer, admin and NBD connection is then mutual TLS with the cluster CA")
			fs.BoolVar(&insecure, "insecure", false, "allow --listen, --nbd, --metrics and --pprof outside loopback without --tls-dir")
			fs.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", sdnet.DefaultMaxConnsPerIP, "peer and admin connections accepted from one IP address at a time")
			fs.StringVar(&plant, "plant", "", "switch on planted bug(s), for proving that fault tests catch them: "+strings.Join(sim.PlantNames(), ", "))
			tune.flags(fs)
			recov.flags(fs)
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usagef("sheep takes no arguments (got %q)", args)
			}
			if cfg.Dir == "" {
				return usagef("sheep: --dir is required")
			}
			if err := checkTick(cfg.Tick); err != nil {
				return err
			}
			if err := recov.apply(&cfg); err != nil {
				return err
			}
			if err := checkExposure("sheep", tlsDir != "", insecure,
				[]exposed{{"--listen", cfg.Listen}, {"--nbd", cfg.NBD}}, []exposed{{"--metrics", cfg.Metrics}, {"--pprof", pprofAddr}}); err != nil {
				return err
			}
			log, err := newLogger(e, logLevel)
			if err != nil {
				return err
			}
			if cfg.TLS, cfg.NBDTLS, err = nodeTLS(tlsDir); err != nil {
				return err
			}
			if tlsDir == "" && (!isLoopback(cfg.Listen) || cfg.NBD != "" && !isLoopback(cfg.NBD)) {
				log.Warn("running without TLS (--insecure): anyone who can reach this node's ports can read and change every VDI")
			}
			if err := tune.apply(1, log); err != nil {
				return err
			}
			if err := servePprof(pprofAddr); err != nil {
				return err
			}
			if cfg.Bugs, err = sim.ParsePlant(plant); err != nil {
				return usagef("--plant: %v", err)
			}
			if cfg.Bugs != (core.Bugs{}) {
				log.Warn("planted bugs switched on: this node is broken on purpose", "plant", plant)
			}
			cfg.Join, cfg.Zone, cfg.Logger = join, uint32(zone), log
			d, err := daemon.New(cfg)
			if err != nil {
				return err
			}
			if err := d.Run(ctx); err != nil {
				return fmt.Errorf("sheep: %w", err)
			}
			return nil
		},
	}
}

// exists reports whether path exists.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// servePprof exposes net/http/pprof for profiling a running node.
func servePprof(addr string) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() { _ = http.Serve(ln, mux) }()
	return nil
}

// tickUsage documents --tick.
const tickUsage = "the node's clock tick: heartbeats go out every tick, a node silent for 100 ticks is declared dead, an unanswered peer request is resent after 30 (every node of a cluster should use the same)"

// checkTick validates --tick.
func checkTick(d time.Duration) error {
	if d < daemon.MinTick || d > daemon.MaxTick {
		return usagef("--tick must be between %v and %v (got %v)", daemon.MinTick, daemon.MaxTick, d)
	}
	return nil
}
