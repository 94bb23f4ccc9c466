package daemon

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/disk"
	sdnet "github.com/sheepdog-go/sheepdog/net"
)

// Config configures a sheep.
type Config struct {
	Dir       string        // data directory
	Listen    string        // peer and admin address host:port
	Advertise string        // the address other nodes reach Listen at, and the node's name in the cluster (NAT, proxy, wildcard Listen); empty: Listen
	NBD       string        // NBD front end address ("" for none)
	Join      []string      // addresses of members to join through (empty: start a new cluster unless the directory has one)
	Zone      uint32        // 0: one zone per node
	VNodes    int           // ring weight; 0: weighted by capacity
	Gateway   bool          // hold no data (0 vnodes)
	Metrics   string        // Prometheus address ("" for none)
	Tick      time.Duration // the node's clock tick (0: DefaultTick)
	Timing    core.Timing   // zero: core.DefaultTiming()
	Logger    *slog.Logger
	Capacity  uint64 // 0: the filesystem's size
	// Disk tunes the object store (fault injection in tests).
	Disk disk.Options
	// ConnsPerPeer is the number of TCP connections to each peer (0: 1).
	// One connection batches best: frames queued together share a write.
	ConnsPerPeer int
	// Bugs switches on planted faults, so that fault tests of real
	// processes can prove they catch them. Never set in production.
	Bugs core.Bugs
	// TLS, if set, puts peer and admin connections under mutual TLS:
	// TLS.Server for those this node accepts, TLS.Client for those it
	// dials (peers, seeds it joins through, members it asks for their
	// status). Package certs builds both from a node's directory.
	TLS *sdnet.TLS
	// NBDTLS, if set, makes the NBD front end require TLS
	// (NBD_OPT_STARTTLS) with this server configuration, which should
	// require client certificates of the cluster CA.
	NBDTLS *tls.Config
	// MaxConnsPerIP caps the peer and admin connections accepted from
	// one IP address (0: sdnet.DefaultMaxConnsPerIP).
	MaxConnsPerIP int
	// RecoveryRate caps the bytes per second recovery copies into this
	// node (see pace.go); 0: unlimited.
	RecoveryRate int64
	// RecoveryBusyRate caps it while clients are busy on the node
	// (0: DefaultRecoveryBusyRate; negative: recovery never yields).
	RecoveryBusyRate int64
}

// DefaultTick is a sheep's clock tick. The core counts time in ticks
// (core.DefaultTiming: heartbeats every tick, election after 10, a dead
// node declared after 100, retransmission after 30), so the tick scales
// them all: at 20 ms a failed node is declared after 2 s and a lost
// message resent after 0.6 s. Each tick costs every node a wake-up and
// the leader a heartbeat to each member, whose write wakes that member
// (while a node is quiet its loop wakes every core.QuietTicks ticks
// instead, see tickClock):
// on the 2-vCPU guest of the README, where waking an idle vCPU is dear, a
// heartbeat's writev took 90 µs of CPU at idle, and going from 10 ms to
// 20 ms cut the mean latency of 4K writes at QD1 on 3 sheep from 248 to
// 223 µs (medians of 4 alternating runs; 212 µs at 40 ms).
const DefaultTick = 20 * time.Millisecond

// Bounds of Config.Tick.
const (
	MinTick = time.Millisecond
	MaxTick = time.Second
)

// Daemon is a running sheep.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	store    *disk.Store
	tr       *sdnet.Transport
	out      *sdnet.Batch // (nodeMu) messages not yet sent
	heldRuns int          // (nodeMu) batches run since out was last flushed
	self     core.NodeInfo

	// nodeMu is held by the one goroutine that runs the node at a time
	// (see drive); it guards the node and the fields marked (nodeMu).
	nodeMu    sync.Mutex
	node      *core.Node      // (nodeMu)
	inbox     chan event      // events for the node, in order
	wake      chan struct{}   // asks the loop goroutine to run the node; capacity 1
	halted    bool            // (nodeMu) the daemon stopped: events are no longer handled
	local     []*core.Message // (nodeMu) messages to self
	localDisk []core.DiskDone // (nodeMu) disk operations completed while running the node

	clock tickClock // the node's ticks
	quiet bool      // (nodeMu) the node was quiet after the last run (core.Node.Quiet)

	pending map[uint64]func(core.Reply) // (nodeMu) where the replies to client requests go
	nextReq atomic.Uint64
	clients atomic.Int64 // client requests (Do) in flight
	workers []chan core.DiskOp
	syncs   chan core.DiskOp
	wg      sync.WaitGroup

	metrics    *metrics
	runsCaller prometheus.Counter // runs of the node by the goroutine that queued an event
	runsLoop   prometheus.Counter // runs by the loop goroutine for queued events
	runsTick   prometheus.Counter // runs by the loop goroutine for a tick
	status     atomic.Pointer[Status]
	stopped    chan struct{}
	cancel     context.CancelFunc
	stopErr    error

	shuttingDown bool // (nodeMu)

	testAfterListen func()   // a test's hook, run between Listen and the first batch
	runs            runClock // the run of the node in progress (watchdog)

	openMu sync.Mutex
	open   map[string]chan struct{} // working VDIs (by name) a local client holds; closed when it lets go

	flattens flattenJobs

	pacer  *pacer        // recovery copies' token bucket
	copies *copyQueue    // copies waiting for tokens (from startDisk)
	copied atomic.Uint64 // bytes of copies from peers written
	rates  rateMeter     // copied bytes per second

	seedErrs sync.Map // seed address → the last error text warned about reaching it
}

type event struct {
	at    time.Duration // when it arrived (tickClock offset)
	msg   *core.Message
	disk  *core.DiskDone
	req   *core.Request
	reply func(core.Reply) // takes the reply to req, holding the node: must not block
	query func(*core.Node)
}

const (
	inboxSize   = 1 << 16
	diskWorkers = 16
	batchMax    = 512
)

// ErrLogLost stops a node whose cluster log lacks entries it had
// acknowledged to the cluster.
var ErrLogLost = errors.New("this node's cluster log lost entries it had acknowledged; empty its data directory and start it again to rejoin as a new node")

// nodeID derives a non-zero node id for a data directory that has none
// yet: from the listen address and a random nonce, so that a node whose
// disk was replaced comes back as a new member, never as the old raft
// member with its log missing (the leader would send it a commit index its
// empty log cannot hold).
func nodeID(addr string, nonce uint64) core.NodeID {
	h := fnv.New64a()
	h.Write([]byte(addr))
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], nonce)
	h.Write(b[:])
	id := h.Sum64() &^ (1 << 63)
	if id == 0 {
		id = 1
	}
	return core.NodeID(id)
}

// New opens the node's directory and prepares it to run.
func New(cfg Config) (*Daemon, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Tick == 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.Tick < MinTick || cfg.Tick > MaxTick {
		return nil, fmt.Errorf("daemon: tick %v is outside [%v, %v]", cfg.Tick, MinTick, MaxTick)
	}
	if cfg.ConnsPerPeer == 0 {
		cfg.ConnsPerPeer = 1
	}
	if cfg.Timing.ElectionTicks == 0 {
		cfg.Timing = core.DefaultTiming()
	}
	if cfg.Listen == "" {
		return nil, errors.New("daemon: --listen is required")
	}
	if cfg.Advertise == "" {
		cfg.Advertise = cfg.Listen
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("daemon: create %s: %w", cfg.Dir, err)
	}
	dopt := cfg.Disk
	dopt.Logger = cfg.Logger
	store, err := disk.Open(cfg.Dir, dopt)
	if err != nil {
		return nil, fmt.Errorf("daemon: open store in %s: %w", cfg.Dir, err)
	}
	d := &Daemon{cfg: cfg, store: store, clock: newTickClock(cfg.Tick), pending: map[uint64]func(core.Reply){}, inbox: make(chan event, inboxSize), wake: make(chan struct{}, 1), stopped: make(chan struct{})}
	if err := d.identity(); err != nil {
		store.Close()
		return nil, err
	}
	d.pacer = newPacer(cfg.RecoveryRate, cfg.RecoveryBusyRate, func() bool { return d.clients.Load() > 0 })
	d.log = cfg.Logger.With("node", fmt.Sprintf("%x", uint64(d.self.ID)), "addr", cfg.Advertise)
	d.metrics = newMetrics(d.Status, d.copied.Load, func() float64 { return time.Duration(d.pacer.waited.Load()).Seconds() })
	d.runsCaller = d.metrics.runs.WithLabelValues("caller")
	d.runsLoop = d.metrics.runs.WithLabelValues("loop")
	d.runsTick = d.metrics.runs.WithLabelValues("tick")
	return d, nil
}

// identity loads or creates the node's id and bumps its incarnation.
func (d *Daemon) identity() error {
	get := func(key string) (uint64, bool, error) {
		b, err := d.store.GetMeta(key)
		if errors.Is(err, disk.ErrNotFound) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, fmt.Errorf("daemon: read %s: %w", key, err)
		}
		v, err := strconv.ParseUint(string(b), 10, 64)
		if err != nil {
			return 0, false, fmt.Errorf("daemon: bad %s %q: %w", key, b, err)
		}
		return v, true, nil
	}
	put := func(key string, v uint64) error {
		if err := d.store.PutMeta(key, []byte(strconv.FormatUint(v, 10))); err != nil {
			return fmt.Errorf("daemon: write %s: %w", key, err)
		}
		return nil
	}
	id, ok, err := get("node-id")
	if err != nil {
		return err
	}
	if !ok {
		var nonce [8]byte
		if _, err := crand.Read(nonce[:]); err != nil {
			return fmt.Errorf("daemon: pick a node id: %w", err)
		}
		id = uint64(nodeID(d.cfg.Advertise, binary.LittleEndian.Uint64(nonce[:])))
		if err := put("node-id", id); err != nil {
			return err
		}
	}
	inc, _, err := get("incarnation")
	if err != nil {
		return err
	}
	inc++
	if err := put("incarnation", inc); err != nil {
		return err
	}
	capacity := d.cfg.Capacity
	if capacity == 0 {
		used, free, err := d.store.Usage()
		if err == nil {
			capacity = used + free
		}
	}
	zone := d.cfg.Zone
	if zone == 0 {
		zone = uint32(id) | 1
	}
	vn := d.cfg.VNodes
	if d.cfg.Gateway {
		vn = 0
	} else if vn == 0 {
		vn = core.DefaultVNodes
	}
	d.self = core.NodeInfo{ID: core.NodeID(id), Addr: d.cfg.Advertise, NBDAddr: d.cfg.NBD, Zone: zone, VNodes: uint16(min(vn, 65535)),
		Incarnation: inc, Capacity: capacity}
	return nil
}

// Self describes this node.
func (d *Daemon) Self() core.NodeInfo { return d.self }

// Run serves until ctx is done, a cluster shutdown is ordered, or a fatal
// error occurs.
func (d *Daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	defer cancel()
	rs, err := d.store.LoadRaft()
	if err != nil {
		return fmt.Errorf("daemon: load raft log: %w", err)
	}
	objs := d.store.List()
	infos := make([]core.ObjectInfo, len(objs))
	for i, o := range objs {
		infos[i] = core.ObjectInfo{OID: core.OID(o.OID), Meta: core.ObjMeta{Version: o.Meta.Version, ReqID: o.Meta.ReqID, Deleted: o.Meta.Deleted}}
	}
	var seed [8]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(time.Now().UnixNano()))
	// Without --join and without a log of its own, a node starts a new
	// cluster; with a log it rejoins the cluster that log describes.
	seeds := d.cfg.Join
	n, err := core.NewNode(core.Config{
		Self:       d.self,
		AutoVNodes: d.cfg.VNodes == 0 && !d.cfg.Gateway,
		Seeds:      seeds,
		Rand:       rand.New(rand.NewPCG(uint64(d.self.ID), binary.LittleEndian.Uint64(seed[:]))),
		Timing:     d.cfg.Timing,
		Bugs:       d.cfg.Bugs,
		Raft:       core.RaftState{HardState: rs.HardState, Snapshot: rs.Snapshot, Entries: rs.Entries},
		Objects:    infos,
	})
	if err != nil {
		return fmt.Errorf("daemon: start node: %w", err)
	}
	d.node = n
	// The transport serves peers and admin clients from the moment it
	// listens, and their handlers run the node: nothing may run it before
	// d.out exists (an admin request in that window sent through a nil
	// batch). Holding the node's lock makes them leave their events to the
	// loop goroutine.
	d.nodeMu.Lock()
	tr, err := sdnet.Listen(sdnet.Config{
		ListenAddr:    d.cfg.Listen,
		ConnsPerPeer:  d.cfg.ConnsPerPeer,
		NodeID:        uint64(d.self.ID),
		Logger:        d.log,
		OnMessage:     d.onMessage,
		OnDrained:     d.kick,
		OnRequest:     d.onAdmin,
		TLS:           d.cfg.TLS,
		MaxConnsPerIP: d.cfg.MaxConnsPerIP,
	})
	if err != nil {
		d.nodeMu.Unlock()
		return fmt.Errorf("daemon: listen on %s: %w", d.cfg.Listen, err)
	}
	d.tr = tr
	d.metrics.transport.Store(tr)
	if d.testAfterListen != nil {
		d.testAfterListen()
	}
	d.out = tr.NewBatch()
	d.clock.ticked = d.clock.now() // the node's time starts now, not at New
	d.nodeMu.Unlock()
	d.startDisk()
	var frontends sync.WaitGroup
	stopFront, err := d.startFrontends(ctx, &frontends)
	if err != nil {
		tr.Close()
		d.stopDisk()
		return err
	}
	d.log.Info("sheep started", "incarnation", d.self.Incarnation, "zone", d.self.Zone, "vnodes", d.self.VNodes,
		"objects", len(infos), "recovery_rate", d.cfg.RecoveryRate, "recovery_busy_rate", d.pacer.busyRate, "nbd", d.cfg.NBD, "join", d.cfg.Join, "tls", d.cfg.TLS != nil, "nbd_tls", d.cfg.NBDTLS != nil)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		d.loop(ctx)
	}()
	go d.watchdog(ctx)
	<-ctx.Done()
	// Front ends first (their in-flight requests still need the node),
	// then the loop, the transport and the disk.
	stopFront()
	frontends.Wait()
	close(d.stopped)
	<-loopDone
	tr.Close()
	d.stopDisk()
	if err := d.store.Close(); err != nil {
		d.log.Error("closing the store", "err", err)
	}
	d.log.Info("sheep stopped")
	return d.stopErr
}

// Stop ends Run as if its context were cancelled.
func (d *Daemon) Stop() {
	if d.cancel != nil {
		d.cancel()
	}
}

func (d *Daemon) onMessage(from uint64, payload []byte) {
	m, err := core.UnmarshalMessage(payload)
	if err != nil {
		d.log.Warn("dropping malformed peer message", "from", fmt.Sprintf("%x", from), "err", err)
		return
	}
	if uint64(m.From) != from {
		d.log.Warn("dropping peer message with a forged sender", "from", fmt.Sprintf("%x", from), "claims", fmt.Sprintf("%x", uint64(m.From)))
		return
	}
	switch m.Type {
	case core.MsgIO, core.MsgRepl, core.MsgSync:
		d.pacer.clientSeen() // a gateway's client I/O: recovery yields to it
	}
	// Run by OnDrained once the frames that arrived together are queued.
	d.enqueue(event{msg: m})
}

// kick has the node run the events queued so far. While at most one
// client request is in flight, the node's work is latency-bound and the
// calling goroutine runs it at once (drive). Under load the loop
// goroutine takes it: events pile up while it wakes, and running them as
// one batch lets their messages and replies share system calls, which
// costs less than it saves in hand-offs once a node is busy.
func (d *Daemon) kick() {
	if d.clients.Load() <= 1 {
		d.drive()
	} else {
		d.wakeLoop()
	}
}

// enqueue adds an event to the inbox; it gives up once the daemon stops.
func (d *Daemon) enqueue(ev event) bool {
	ev.at = d.clock.now()
	select {
	case d.inbox <- ev:
		return true
	case <-d.stopped:
		return false
	}
}

func (d *Daemon) wakeLoop() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// driveRounds bounds how many batches a goroutine that queued an event
// runs for others before it leaves the rest to the loop goroutine.
const driveRounds = 4

// drive runs the node on the calling goroutine when no other goroutine
// holds it: it takes what is queued, steps the node and carries out its
// Ready. This "run to completion" saves the hand-off to a loop goroutine
// on the paths that matter for latency (a peer's replication request is
// stepped, journaled and answered by the goroutine that read it from the
// network; a client's write is stepped and sent to the replicas by the
// goroutine serving the client's request), and each hand-off costs a
// thread wake-up, which on a virtualised machine is tens of
// microseconds. If another goroutine holds the node, it takes the event:
// the holder checks the inbox again after unlocking, so nothing is left
// behind. Events are still handled one goroutine at a time, in inbox
// order, as the core requires.
func (d *Daemon) drive() {
	for range driveRounds {
		if !d.nodeMu.TryLock() {
			return
		}
		d.runsCaller.Inc()
		d.runLocked()
		d.nodeMu.Unlock()
		if len(d.inbox) == 0 {
			return
		}
	}
	d.wakeLoop()
}

// runLocked handles queued events in batches and processes the Ready of
// each batch; called with nodeMu held.
func (d *Daemon) runLocked() {
	if d.halted || d.out == nil { // nil: not started; the loop takes the events once it is
		return
	}
	d.runs.start()
	defer d.runs.stop()
drain:
	for i := 0; i < batchMax; i++ {
		select {
		case ev := <-d.inbox:
			d.catchUp(ev.at)
			d.handle(ev)
		default:
			break drain
		}
	}
	d.catchUp(d.clock.now())
	if err := d.process(); err != nil && d.stopErr == nil {
		d.log.Error("fatal: cannot persist the cluster log", "err", err)
		d.stopErr = err
		d.cancel()
	}
	if d.node.LogLost() && d.stopErr == nil {
		d.stopErr = ErrLogLost
		d.log.Error("fatal: stopping", "err", ErrLogLost, "dir", d.cfg.Dir)
		d.cancel()
	}
	q := d.node.Quiet()
	if d.quiet && !q {
		d.wakeLoop() // its timer was set for a quiet node
	}
	d.quiet = q
	// Send the messages once there is nothing more to do at once, so
	// that the messages of a burst of events share system calls, but
	// never hold them for more than a few batches.
	d.heldRuns++
	if len(d.inbox) == 0 || d.heldRuns >= flushRuns {
		d.out.Flush()
		d.heldRuns = 0
	}
}

// flushRuns bounds the batches whose messages are held back while more
// events wait.
const flushRuns = 4

// loop runs the node at every tick (every core.QuietTicks ticks while it
// is quiet; runLocked delivers the ticks that passed), and when events
// were left to it (under load, disk completions, or more than a caller
// would run).
func (d *Daemon) loop(ctx context.Context) {
	t := time.NewTimer(d.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-d.stopped:
			d.nodeMu.Lock()
			d.halted = true
			d.failPending()
			d.out.Flush()
			d.nodeMu.Unlock()
			return
		case <-t.C:
			d.nodeMu.Lock()
			d.runsTick.Inc()
			d.runLocked()
			next := d.clock.next(d.quiet)
			d.nodeMu.Unlock()
			t.Reset(max(next-d.clock.now(), 0))
		case <-d.wake:
			d.nodeMu.Lock()
			d.runsLoop.Inc()
			d.runLocked()
			next := d.clock.next(d.quiet)
			d.nodeMu.Unlock()
			t.Reset(max(next-d.clock.now(), 0)) // no stale tick left behind since Go 1.23
		}
		if len(d.inbox) > 0 {
			d.wakeLoop()
		}
	}
}

func (d *Daemon) handle(ev event) {
	switch {
	case ev.msg != nil:
		d.node.Step(ev.msg)
	case ev.disk != nil:
		d.node.Step(*ev.disk)
	case ev.req != nil:
		id := d.nextReq.Add(1)
		ev.req.ID = id
		d.pending[id] = ev.reply
		d.node.Step(ev.req)
	case ev.query != nil:
		ev.query(d.node)
	}
}

// process carries out everything the node has ready. Messages are
// collected in d.out; runLocked sends them.
func (d *Daemon) process() error {
	for {
		for len(d.local) > 0 || len(d.localDisk) > 0 {
			if len(d.local) > 0 {
				m := d.local[0]
				d.local = d.local[1:]
				d.node.Step(m)
				continue
			}
			r := d.localDisk[0]
			d.localDisk = d.localDisk[1:]
			d.node.Step(r)
		}
		if !d.node.HasReady() {
			break
		}
		rd := d.node.Ready()
		if !raft.IsEmptySnap(rd.Snapshot) || len(rd.Entries) > 0 || !raft.IsEmptyHardState(rd.HardState) {
			if err := d.store.SaveRaft(rd.HardState, rd.Entries, rd.Snapshot); err != nil {
				return fmt.Errorf("save raft state: %w", err)
			}
		}
		if rd.CompactIndex > 0 {
			if err := d.store.CompactRaft(rd.CompactIndex); err != nil {
				d.log.Warn("compacting the raft log", "err", err)
			}
		}
		for _, note := range rd.Notes {
			d.log.Info(note)
		}
		for _, m := range rd.Messages {
			d.sendMsg(m)
		}
		if len(rd.Messages) > 0 && len(rd.Disk) > 0 && len(d.inbox) == 0 {
			// Nothing else waits to share their system calls: send now,
			// before the local disk work, which the messages do not
			// depend on, so that the replicas start on a write while
			// this node journals its own copy.
			d.out.Flush()
			d.heldRuns = 0
		}
		for _, op := range rd.Disk {
			d.submitDisk(op)
		}
		for _, r := range rd.Replies {
			if done, ok := d.pending[r.ID]; ok {
				delete(d.pending, r.ID)
				done(r)
			}
		}
		d.node.Advance()
	}
	d.publishStatus()
	if d.node.ShutdownRequested() && !d.shuttingDown {
		d.shuttingDown = true
		d.log.Info("cluster shutdown ordered: stopping")
		go func() {
			time.Sleep(time.Second) // let the replies and log entries go out
			d.cancel()
		}()
	}
	return nil
}

func (d *Daemon) failPending() {
	for id, done := range d.pending {
		done(core.Reply{ID: id, Code: core.ErrShutdown})
		delete(d.pending, id)
	}
}

// sendMsg delivers one outgoing message.
func (d *Daemon) sendMsg(m *core.Message) {
	if m.To == d.self.ID || (m.To == 0 && m.ToAddr == d.self.Addr) {
		d.local = append(d.local, m)
		return
	}
	head, data, err := m.MarshalSplit()
	if err != nil {
		d.log.Error("encoding a message", "type", m.Type, "err", err)
		return
	}
	if m.To == 0 {
		// Joining through a seed whose id we do not know: the admin
		// channel of that address carries it.
		go d.sendToAddress(m.ToAddr, append(head, data...))
		return
	}
	lane := uint64(m.OID)
	if m.Type == core.MsgRaft {
		lane = 0
	}
	d.metrics.msgsSent.Inc()
	// A write's data goes out uncopied: nothing changes it once the core
	// has it (see execDisk).
	if err := d.out.SendSplit(uint64(m.To), m.ToAddr, lane, head, data); err != nil {
		d.metrics.msgsDropped.Inc()
	}
}

// dialAdmin opens an admin connection to another node, over TLS when
// this node uses it.
func (d *Daemon) dialAdmin(ctx context.Context, addr string) (*sdnet.Client, error) {
	if d.cfg.TLS != nil && d.cfg.TLS.Client != nil {
		return sdnet.DialTLS(ctx, addr, d.cfg.TLS.Client)
	}
	return sdnet.Dial(ctx, addr)
}

// seedFailed logs why a seed could not be reached: a TLS refusal (a
// certificate of another CA, a node without TLS) at Warn the first time
// it is seen for that address, as the join is retried many times a
// minute; other failures, typically a seed not up yet, at Debug.
func (d *Daemon) seedFailed(addr, what string, err error) {
	var te *sdnet.TLSError
	if !errors.As(err, &te) {
		d.log.Debug(what, "addr", addr, "err", err)
		return
	}
	if last, ok := d.seedErrs.Swap(addr, te.Reason); ok && last == te.Reason {
		d.log.Debug(what, "addr", addr, "err", err)
		return
	}
	d.log.Warn(what+": refused at the TLS handshake", "addr", addr, "reason", te.Reason, "err", err)
}

// dataPath is the node's directory (for the CLI).
func (d *Daemon) dataPath() string { return filepath.Clean(d.cfg.Dir) }
