package faults

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Fault kinds.
const (
	KindPartition          = "partition"             // two nodes cannot reach each other
	KindOneWay             = "one-way"               // one node's packets to another are lost, not the other way
	KindIsolateLeader      = "isolate-leader"        // the raft leader cut off from every node and client
	KindIsolateAttacher    = "isolate-attacher"      // the node a client writes through cut off from everyone
	KindSplit              = "split"                 // a minority of nodes cut off from the majority
	KindKill               = "kill"                  // kill -9, later restarted
	KindPause              = "pause"                 // SIGSTOP longer than the failure timeout, then SIGCONT
	KindRestart            = "restart"               // SIGTERM, restarted
	KindENOSPC             = "enospc"                // a node's tmpfs filled up, later freed
	KindBitFlip            = "bitflip"               // bits flipped in object files and sidecars of a stopped node
	KindDeleteObject       = "delete-object"         // an object file of a stopped node deleted
	KindTruncateJournal    = "truncate-journal"      // the journal's tail cut after kill -9
	KindReplaceDisk        = "replace-disk"          // kill -9, data directory emptied, restarted at the same address
	KindReplaceDiskNewAddr = "replace-disk-new-addr" // the same, restarted at a new address
)

// Kinds lists every fault kind.
var Kinds = []string{
	KindPartition, KindOneWay, KindIsolateLeader, KindIsolateAttacher, KindSplit,
	KindKill, KindPause, KindRestart,
	KindENOSPC, KindBitFlip, KindDeleteObject, KindTruncateJournal, KindReplaceDisk, KindReplaceDiskNewAddr,
}

// ParseKinds reads a comma-separated list of fault kinds ("all" or ""
// for every kind).
func ParseKinds(s string) ([]string, error) {
	if s == "" || s == "all" {
		return slices.Clone(Kinds), nil
	}
	var out []string
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		if !slices.Contains(Kinds, k) {
			return nil, fmt.Errorf("unknown fault kind %q (known: %s)", k, strings.Join(Kinds, ", "))
		}
		out = append(out, k)
	}
	return out, nil
}

// Fault is one scheduled fault. Which node it hits is decided when it
// runs (the leader and the attacher are what they are then), from Pick
// and Pick2; everything random about it comes from the schedule.
type Fault struct {
	Kind  string
	Gap   time.Duration // quiet time before it
	Hold  time.Duration // how long it lasts before it is healed
	Pick  uint64        // chooses the target node (modulo the node count) or client
	Pick2 uint64        // chooses a second node, a minority, bits to flip
}

func (f Fault) String() string {
	return fmt.Sprintf("%s(hold %v after %v, pick %d/%d)", f.Kind, f.Hold, f.Gap, f.Pick%1000, f.Pick2%1000)
}

// Schedule is everything a seed decides about a run.
type Schedule struct {
	Seed    uint64
	Nodes   int
	Copies  int
	Clients int
	Faults  []Fault
}

// NewSchedule derives a run's schedule from its seed: cluster size 3-5
// (unless nodes > 0), copies 2 or 3, 2-3 clients, and faults faults whose
// kinds go through kinds in a seeded order (so that a run with at least
// len(kinds) faults has every one of them). tick is the nodes' tick:
// pauses last longer than the failure timeout of 100 ticks.
func NewSchedule(seed uint64, nodes, faults int, kinds []string, tick time.Duration) Schedule {
	rng := rand.New(rand.NewPCG(seed, 0x5d0f_a017))
	s := Schedule{Seed: seed, Nodes: nodes}
	if s.Nodes <= 0 {
		s.Nodes = 3 + rng.IntN(3)
	}
	s.Copies = 2 + rng.IntN(2)
	s.Clients = 2 + rng.IntN(2)
	if len(kinds) == 0 {
		kinds = Kinds
	}
	dead := 100 * tick
	var order []string
	for len(s.Faults) < faults {
		if len(order) == 0 {
			order = slices.Clone(kinds)
			rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		}
		k := order[0]
		order = order[1:]
		f := Fault{Kind: k, Gap: ms(rng, 500, 2000), Pick: rng.Uint64(), Pick2: rng.Uint64()}
		switch k {
		case KindPause:
			f.Hold = dead + dead/2 + time.Duration(rng.Int64N(int64(dead*3/2)))
		case KindRestart, KindBitFlip, KindDeleteObject, KindTruncateJournal, KindReplaceDisk, KindReplaceDiskNewAddr:
			f.Hold = ms(rng, 100, 1500)
		case KindKill:
			f.Hold = ms(rng, 300, 3000)
		default:
			f.Hold = ms(rng, 1500, 4000)
		}
		s.Faults = append(s.Faults, f)
	}
	return s
}

func ms(rng *rand.Rand, lo, hi int) time.Duration {
	return time.Duration(lo+rng.IntN(hi-lo)) * time.Millisecond
}

func (s Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed=%d nodes=%d copies=%d clients=%d faults:", s.Seed, s.Nodes, s.Copies, s.Clients)
	for _, f := range s.Faults {
		b.WriteString(" " + f.String())
	}
	return b.String()
}
