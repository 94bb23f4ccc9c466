package sim

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	flagSeeds  = flag.Int("sim.seeds", 200, "seeds TestSeeds runs")
	flagFirst  = flag.Uint64("sim.first", 1, "first seed of TestSeeds")
	flagFaults = flag.String("sim.faults", "all", "faults of TestSeeds")
	flagOps    = flag.Int("sim.ops", 2000, "client operations per run in TestSeeds")
)

func batch(t *testing.T, cfg Config, first uint64, runs int) Summary {
	t.Helper()
	return Batch{Config: cfg, First: first, Runs: runs}.Run(context.Background(), nil)
}

func describeFailures(cfg Config, s Summary) string {
	var b strings.Builder
	for _, r := range s.Failures {
		cfg.Seed = r.Seed
		fmt.Fprintf(&b, "\n  seed %d: %s\n    replay: %s", r.Seed, strings.Join(r.Problems, "; "), ReplayCommand(cfg))
	}
	return b.String()
}

// TestDiskFullSeeds: full disks among crashes and partitions, with reads,
// writes, zeroes, discards and flushes (the lifecycle workload is not ready
// for full disks yet, see AllFaults). Writes a full replica cannot store
// fail with ErrNoSpace and nothing waits behind them for ever.
func TestDiskFullSeeds(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Faults = FaultDiskFull | FaultCrash | FaultPartition | FaultOneWay | FaultLoss
	cfg.Lifecycle = false
	s := batch(t, cfg, 1, 100)
	t.Log(s)
	if len(s.Failures) > 0 {
		t.Fatalf("%d of %d seeds failed:%s", len(s.Failures), s.Runs, describeFailures(cfg, s))
	}
}

// TestSeeds runs the default configuration with every fault on many seeds:
// every run must pass every check.
func TestSeeds(t *testing.T) {
	faults, err := ParseFaults(*flagFaults)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Faults = faults
	cfg.Ops = *flagOps
	s := batch(t, cfg, *flagFirst, *flagSeeds)
	t.Log(s)
	if len(s.Failures) > 0 {
		t.Fatalf("%d of %d seeds failed:%s", len(s.Failures), s.Runs, describeFailures(cfg, s))
	}
}

// TestRegressionSeeds replays every seed that failed during development,
// with the faults it failed under. The bug each one found is noted.
func TestRegressionSeeds(t *testing.T) {
	shape := func(nodes, copies, clients, ops int) func(*Config) {
		return func(c *Config) { c.Nodes, c.Copies, c.Clients, c.Ops = nodes, copies, clients, ops }
	}
	tests := []struct {
		seed   uint64
		faults string
		found  string
		mod    func(*Config) // the run's shape, if not the default
	}{
		{9, "partition", "a deposed leader's queued 'leave' proposals removed live nodes", nil},
		{11, "partition", "same", nil},
		{13, "oneway", "a leader that hears nobody declared everyone dead", nil},
		{24, "oneway", "same", nil},
		{6, "diskerror", "a failed write left replicas diverged", nil},
		{12, "diskerror", "same", nil},
		{2, "crash,join,leave,loss,delay,dup,reorder,partition,oneway,disklatency,diskerror,drift,powerloss", "a lost snapshot message left a new node stuck", nil},
		{13, "crash,join,leave,loss,delay,dup,reorder,partition,oneway,disklatency,diskerror,drift,powerloss", "the only seed address had left", nil},
		{53, "crash,join,leave,loss,delay,dup,reorder,partition,oneway,disklatency,diskerror,drift,powerloss", "a lost 'recovered' announcement blocked garbage collection", nil},
		{52, "crash,join,leave,loss,delay,dup,reorder,partition,oneway,disklatency,diskerror,drift,powerloss", "a partition split the cluster and the leader removed more nodes than copies allow", nil},
		{269, "crash,join,leave,loss,delay,dup,reorder,partition,oneway,disklatency,diskerror,drift,powerloss", "nodes that came back still counted as removed", nil},
		{120, "all", "concurrent repairs overwrote a write acknowledged meanwhile", nil},
		{60, "all", "recovery waited forever for a version whose only copy was corrupted", nil},
		{67, "all", "a corrupted replica plus two failures: the sim exceeded its fault budget", nil},
		{72, "all", "a late-settled write was counted as flushed", nil},
		{98, "all", "a retransmitted converge request looped forever", nil},
		{867, "all", "an object busy during garbage collection was never collected", nil},
		{221, "all", "a recovery copy landing after garbage collection stayed as an extra copy", nil},
		{603, "all", "same", nil},
		{510, "all", "a scrub aborted by an epoch change told replicas to take its stale copy", nil},
		{100937, "all", "a restarted node that had not recovered yet did not count as missing data: two more removals lost a write", nil},
		{103988, "all", "same", nil},
		{101510, "all", "a self-repair waited on the queue it blocked itself (deadlock)", nil},
		{103722, "all", "same", nil},
		{101675, "all", "same, seen as recovery that never ended", nil},
		{203722, "all", "an old retransmitted scrub request made a replica delete a write acknowledged since", nil},
		{206703, "all", "a node removed then restarted did not count as missing data", nil},
		{205442, "all", "a repair and a catch-up waited for each other's fetch (deadlock)", nil},
		{301261, "all", "the last node to finish recovery never announced it: no stable point, a dead node could never be removed", nil},
		{300012, "all", "same", nil},
		{105, "crash,loss,partition,oneway,wipe", "a rollback that timed out was recorded as refused, but it was in the cluster log and took effect later (the checker saw acknowledged writes vanish)", nil},
		{10010, "all", "a primary that had been out of the epoch acknowledged a retry of a write only its copy had, converging a sealed snapshot's copies to it (the write fence now comes first)", nil},
		{306147, "all", "same", nil},
		{403755, "all", "the leader left before it recorded a full recovery, so a node removed earlier still counted as missing", nil},
		{407973, "all", "same", nil},
		{152, "all", "a node back from a partition (same incarnation, data intact) counted as missing data", nil},
		{504577, "all", "the simulator crashed a node while a removed node's data was not re-replicated yet (its fault budget ignored removed and restarted nodes)", nil},
		{33000396, "all", "a repair replaced a corrupted copy with an older version while co-replicas were still recovering the newer one (an acknowledged write lost)", shape(4, 3, 6, 4000)},
		{33000325, "all", "a duplicated converge request reached a replica after the attacher's direct write and rolled it back", shape(4, 3, 6, 4000)},
		{40001313, "all", "a duplicated scrub request reached the attacher after its direct write and made it take the primary's older copy", nil},
		{46000117, "all", "a repair refused to fall back to an older version when the newest existed only in its own corrupted copy (a write that failed): the object stayed unreadable", shape(3, 3, 3, 2000)},
		{40001076, "all", "same", nil},
		{60001067, "all", "the new attacher read its own replica holding the previous attacher's write still in flight, which then failed (a read saw a value that a later read no longer did)", func(c *Config) { c.VDIs, c.Clients = 1, 4 }},
		{77000210, "all", "a failing disk made 48 writes to one block end with unknown outcome, and the checker timed out on the block", shape(6, 3, 3, 3000)},
		{90002064, "all", "a late duplicate of a scrub request from before a write made a replica mirror the primary's copy while the primary was still applying the write: the replica deleted it", nil},
		{94000759, "all", "same kind (a late request from before a write undid it on a replica)", shape(4, 2, 5, 2000)},
		{1, "all", "a re-stamp answer that failed across an epoch change left the build stuck for good", nil},
		{45, "all", "a node that had not applied a build's end read the new VDI through its parent after the attacher had written it", nil},
		{138, "all", "an unlinked copy-on-write copy in a sealed snapshot was never repaired when corrupted (orphans are now deleted)", nil},
		{176, "all", "a copy-on-write of a clone deleted meanwhile crashed the node (object size 0)", nil},
		{1001, "all", "a retried rollback proposal was in the log twice, and its repeat dropped the table of the VDI the first one made (a power loss then lost every inherited block)", func(c *Config) { c.Ops = 1000 }},
		{173, "all", "a write a live snapshot parked for the new working VDI was dropped without an answer when that attachment went away", nil},
		{35000035, "all", "with fewer members than copies the simulator crashed the only holder of a write (its fault budget ignored missing replicas)", shape(2, 2, 3, 2000)},
		{95, "all", "a VDI deleted while its attacher's table write was in flight: a replica that had applied the delete answered 'not ready' (a deleted VDI's table has no placement), the primary retried forever and reclaim's barrier waited for it", nil},
		{37, "all", "a copy-on-write whose table entry a primary refused (it had applied a live snapshot the attacher had not) was resent as the plain write to its orphan copy, whose primary took it for a retry of the copy (same ReqID) and acknowledged it unapplied: a flushed write was lost", nil},
		{19, "all", "a copy-on-write whose table entry was refused (the table's primary had applied a snapshot the attacher had not) sent the client's write to the unlinked copy, whose primary took it for a retry of the copy's write (same id) and acknowledged it: lost with the copy", nil},
		{8, "diskfull", "an attacher read its table from its own replica, whose write had failed there for want of space (the node owed that copy): every entry read as the VDI's own, reads and the allocation map disagreed", func(c *Config) { c.Ops = 800 }},
		{40, "diskfull", "a replica's refill of a sealed snapshot's orphan landed after the orphan's reclaim had passed it by (not present yet): one copy stayed", func(c *Config) { c.Ops = 800 }},
		{131, "diskfull", "a replica answered a snapshot's barrier before a failed write was rolled back on it; the seal re-stamped that write's version, which no copy kept, so every copy fell below the seal and an acknowledged write read as zeros", func(c *Config) { c.Ops = 800 }},
		{183, "all", "the leader took a cut-off voter out of the epoch while a wiped voter and one gone for good were still unnoticed: two of four voters were left, and the cluster log stopped for good", nil},
		{35, "diskfull", "same kind: an object a failed copy-on-write had made on replicas only, rolled back after they answered the barrier, stayed in the new VDI's table, pointing at nothing", nil},
		{36000614, "all", "(first seen as 35000065) a node cut off by a partition, still thinking it held a VDI's attach lock, resolved a read through its cached table to the parent snapshot's object (no lease needed: it never changes) although the new attacher had copied the object since: the read returned the snapshot's old value", shape(2, 2, 3, 2000)},
		{35000171, "all", "a write a live snapshot refused was parked for the new working VDI while a retry of its own still waited for the node to serve; the retry sent it again, it was refused and parked a second time, and the new VDI's write queue kept a finished head for good", shape(2, 2, 3, 2000)},
		{35000007, "all", "the simulator wiped the disk of a two-node cluster's only raft voter: the cluster log was gone, the survivor could never form a cluster again", shape(2, 2, 3, 2000)},
		{35000428, "all", "a restarted primary held a write its co-replica never got (it crashed with the write in flight) and served reads of it before the co-replica had fetched it; the primary was then taken out of the epoch, and the co-replica's older copy came back", shape(2, 2, 3, 2000)},
		{35000307, "all", "a wiped node came back at a new address and was given the seed nodes' first addresses, where no node listened any more: it never joined", shape(2, 2, 3, 2000)},
		{60349, "all", "the leader took a member out of the epoch on a report of it being unreachable that the reporter had stopped renewing (the partition had healed): the leader aged the old report on, and with a second copy corrupted a clone's table was lost", shape(3, 2, 3, 2000)},
		{60595, "all", "a re-stamp of a snapshot's seal landed on a copy being repaired, and the repair then put the co-replica's copy of the version before it: below the seal, an acknowledged write read as a hole (found with a heartbeat every 2 ticks)", func(c *Config) { shape(3, 2, 3, 2000)(c); c.HeartbeatTicks = 2 }},
		{36000964, "all", "same, with a heartbeat every 2 ticks", func(c *Config) { shape(2, 2, 3, 2000)(c); c.HeartbeatTicks = 2 }},
		{36000577, "all", "a snapshot delete that got no reply (its node crashed) had been committed, but the simulator still counted the snapshot live and asked to read it for ever", shape(2, 2, 3, 2000)},
		{62344, "all", "reclaim counted a clone's table entry as no longer naming a deleted snapshot while the copy-on-write's table write was not yet durable; the snapshot was purged, and after a power loss the entry named it again: the clone could not be read", func(c *Config) { shape(3, 2, 3, 2000)(c); c.HeartbeatTicks = 2 }},
		{38000465, "all", "same for a clone volume: its delete got no reply but was committed, and the simulator read it for ever", shape(2, 2, 3, 2000)},
		{80188, "all", "(first seen as 60200 of shape 3/2) the redundancy check wanted a corrupted object of a deleted snapshot repaired although no table named it any more (garbage that only reclaim removes, and no vdi check reads)", nil},
		{91264, "all", "two seed nodes wiped (not joined again) and the third gone for good: the simulator gave a wiped node only dead seeds to join through (found with quiet ticking)", func(c *Config) { shape(3, 2, 3, 2000)(c); c.Quiet = true }},
		{197, "crash,loss,partition,oneway,wipe", "a second builder of a snapshot in the same epoch (a new leader) re-stamped only the copies at the first builder's re-stamp version, the newest: the primary's copy, which the first had not reached, fell below the seal and read as a hole", nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", strings.SplitN(tt.faults, ",", 2)[0], tt.seed), func(t *testing.T) {
			t.Parallel()
			cfg := DefaultConfig()
			cfg.Seed = tt.seed
			if tt.mod != nil {
				tt.mod(&cfg)
			}
			f, err := ParseFaults(tt.faults)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Faults = f
			if r := Run(cfg); !r.OK() {
				t.Fatalf("seed %d (found: %s) fails again: %v\nreplay: %s", tt.seed, tt.found, r.Problems, ReplayCommand(cfg))
			}
		})
	}
}

// TestPlantedBugs proves the checks can fail: each planted bug must be
// caught within 200 seeds of the default configuration.
func TestPlantedBugs(t *testing.T) {
	for _, p := range Plants {
		t.Run(p.Name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Bugs = p.Bugs
			const chunk = 16
			for first := uint64(1); first <= 200; first += chunk {
				s := batch(t, cfg, first, int(min(chunk, 201-first)))
				if len(s.Failures) > 0 {
					r := s.Failures[0]
					t.Logf("%s caught by seed %d: %s", p.Name, r.Seed, r.Problems[0])
					return
				}
			}
			t.Fatalf("planted bug %s (%s) not caught in 200 seeds", p.Name, p.Doc)
		})
	}
}

// TestDeterminism: the same seed gives the same trace, byte for byte
// (its hash), also with every message round-tripped through its wire
// encoding; different seeds give different traces.
func TestDeterminism(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"default", func(*Config) {}},
		{"codec", func(c *Config) { c.Codec = true }},
		{"no faults", func(c *Config) { c.Faults = 0 }},
		{"planted bug", func(c *Config) { c.Bugs.ReadAny = true }},
		{"quiet", func(c *Config) { c.Quiet = true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var hashes [][]uint64
			for rep := 0; rep < 2; rep++ {
				var hs []uint64
				for seed := uint64(1); seed <= 3; seed++ {
					cfg := DefaultConfig()
					cfg.Seed = seed
					cfg.Ops = 500
					tt.mod(&cfg)
					hs = append(hs, Run(cfg).TraceHash)
				}
				hashes = append(hashes, hs)
			}
			if diff := cmp.Diff(hashes[0], hashes[1]); diff != "" {
				t.Fatalf("same seeds, different traces (-first +second):\n%s", diff)
			}
			if hashes[0][0] == hashes[0][1] || hashes[0][1] == hashes[0][2] {
				t.Fatalf("different seeds gave the same trace hash: %x", hashes[0])
			}
		})
	}
}

// TestCodecRuns runs seeds with every message encoded and decoded, which
// checks the wire format against everything the core sends.
func TestCodecRuns(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Codec = true
	cfg.Ops = 1000
	s := batch(t, cfg, 1000, 8)
	if len(s.Failures) > 0 {
		t.Fatalf("failures with the codec:%s", describeFailures(cfg, s))
	}
}

// TestFailureWritesVisualisation: a failing run names its replay command
// and writes porcupine's visualisation.
func TestFailureWritesVisualisation(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Bugs.SkipRecovery = true
	cfg.OutDir = dir
	for seed := uint64(1); seed <= 50; seed++ {
		cfg.Seed = seed
		r := Run(cfg)
		if r.OK() || r.HTML == "" {
			continue
		}
		b, err := os.ReadFile(r.HTML)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "<html") && !strings.Contains(string(b), "<!DOCTYPE") {
			t.Fatalf("%s does not look like HTML", r.HTML)
		}
		if cmd := ReplayCommand(cfg); !strings.Contains(cmd, fmt.Sprintf("--seed %d", seed)) || !strings.Contains(cmd, "--plant skip-recovery") {
			t.Fatalf("replay command %q", cmd)
		}
		return
	}
	t.Fatal("no failing run with a visualisation in 50 seeds of skip-recovery")
}

func TestParseFaults(t *testing.T) {
	tests := []struct {
		in   string
		want Faults
		err  bool
	}{
		{"all", AllFaults, false},
		{"none", 0, false},
		{"crash,loss", FaultCrash | FaultLoss, false},
		{"crash, partition", FaultCrash | FaultPartition, false},
		{"bogus", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseFaults(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseFaults(%q) = %v, %v", tt.in, got, err)
		}
		if err == nil {
			back, _ := ParseFaults(got.String())
			if back != got {
				t.Errorf("round trip of %q: %v", tt.in, back)
			}
		}
	}
}

// TestAttacherShortcuts: an attacher serves reads of objects it holds a
// replica of from that replica once its writes to them have completed
// (readHere), receives its own writes as a replica without their data
// (stashed), and runs the operations of objects their primaries handed
// over to it (direct writes), which the primaries take back when someone
// else needs them, with and without faults, and every check still holds.
func TestAttacherShortcuts(t *testing.T) {
	for _, faults := range []string{"none", "all"} {
		f, err := ParseFaults(faults)
		if err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.Faults = f
		cfg.Seed = 3
		r := Run(cfg)
		if !r.OK() {
			t.Fatalf("faults %s: %v", faults, r.Problems)
		}
		if r.ReadsHere == 0 {
			t.Errorf("faults %s: no read was served from the attacher's own replica (%d operations)", faults, r.Ops)
		}
		if r.Stashed == 0 {
			t.Errorf("faults %s: no replica write took its data from the writing gateway (%d operations)", faults, r.Ops)
		}
		if r.Direct == 0 || r.Revokes == 0 {
			t.Errorf("faults %s: %d operations ran at attachers as primaries of objects handed over to them, %d objects taken back; want both", faults, r.Direct, r.Revokes)
		}
		t.Logf("faults %s: %d operations, %d object reads served by the attacher's replica, %d stashed replica writes, %d direct operations, %d revokes",
			faults, r.Ops, r.ReadsHere, r.Stashed, r.Direct, r.Revokes)
	}
}

// TestQuietSeeds runs seeds with the daemon's quiet ticking (Config.Quiet):
// nodes with nothing to do get their ticks in bursts, just before their
// next event, and every check still holds. The bursts must happen, or
// the runs would prove nothing about them.
func TestQuietSeeds(t *testing.T) {
	for _, shape := range []struct {
		nodes, copies int
		faults        string
		seed          uint64
	}{{5, 3, "all", 90000}, {3, 2, "all", 91000}, {3, 3, "none", 94000}} {
		name := fmt.Sprintf("%d nodes, copies %d, faults %s", shape.nodes, shape.copies, shape.faults)
		cfg := DefaultConfig()
		cfg.Nodes, cfg.Copies, cfg.Quiet = shape.nodes, shape.copies, true
		var err error
		if cfg.Faults, err = ParseFaults(shape.faults); err != nil {
			t.Fatal(err)
		}
		s := batch(t, cfg, shape.seed, 8)
		if len(s.Failures) > 0 {
			t.Fatalf("%s: %d of %d seeds failed:%s", name, len(s.Failures), s.Runs, describeFailures(cfg, s))
		}
		cfg.Seed = shape.seed
		if r := Run(cfg); r.Bursts == 0 {
			t.Errorf("%s, seed %d: no node was ever ticked in a burst", name, shape.seed)
		} else {
			t.Logf("%s, seed %d: %d bursts of ticks", name, shape.seed, r.Bursts)
		}
	}
}
