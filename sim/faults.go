package sim

import (
	"fmt"
	"slices"
	"strings"
)

// Faults is a set of fault kinds.
type Faults uint32

// Fault kinds the simulator injects.
const (
	FaultCrash       Faults = 1 << iota // crash and restart; unsynced writes are lost
	FaultJoin                           // a new node joins
	FaultLeave                          // a node stops for good
	FaultLoss                           // messages are dropped
	FaultDelay                          // messages are delayed by up to tens of milliseconds
	FaultDup                            // messages are delivered twice
	FaultReorder                        // messages overtake each other
	FaultPartition                      // nodes are cut off in both directions
	FaultOneWay                         // nodes are cut off in one direction
	FaultDiskLatency                    // a disk becomes slow
	FaultDiskError                      // a disk fails some operations
	FaultCorrupt                        // a stored replica is silently corrupted
	FaultDrift                          // node clocks tick at different rates
	FaultPowerLoss                      // at the end every node loses power at once
	FaultWipe                           // a node crashes and loses its whole disk; it comes back as a new node (a replaced disk)
	FaultDiskFull                       // a disk fills up: writes that store data fail with ErrNoSpace for a while (not in "all" yet)
	faultEnd
)

// AllFaults is every fault kind but FaultDiskFull, which the lifecycle
// workload does not fully survive yet (a copy-on-write's shared object
// lost on a full disk: 1 of 200 seeds of diskfull alone, down from 51
// before barriers took the primaries' versions and owed copies stopped
// being read or sealed; without the lifecycle none of 200 fails,
// TestDiskFullSeeds).
const AllFaults = faultEnd - 1 - FaultDiskFull

var faultNames = []struct {
	f    Faults
	name string
}{
	{FaultCrash, "crash"}, {FaultJoin, "join"}, {FaultLeave, "leave"}, {FaultLoss, "loss"},
	{FaultDelay, "delay"}, {FaultDup, "dup"}, {FaultReorder, "reorder"}, {FaultPartition, "partition"},
	{FaultOneWay, "oneway"}, {FaultDiskLatency, "disklatency"}, {FaultDiskError, "diskerror"},
	{FaultCorrupt, "corrupt"}, {FaultDrift, "drift"}, {FaultPowerLoss, "powerloss"}, {FaultWipe, "wipe"}, {FaultDiskFull, "diskfull"},
}

// FaultNames lists the names ParseFaults accepts.
func FaultNames() []string {
	out := make([]string, len(faultNames))
	for i, f := range faultNames {
		out[i] = f.name
	}
	return out
}

// ParseFaults reads "all", "none" or a comma-separated list of names.
func ParseFaults(s string) (Faults, error) {
	switch strings.TrimSpace(s) {
	case "all":
		return AllFaults, nil
	case "none", "":
		return 0, nil
	}
	var f Faults
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		i := slices.IndexFunc(faultNames, func(x struct {
			f    Faults
			name string
		}) bool {
			return x.name == part
		})
		if i < 0 {
			return 0, fmt.Errorf("unknown fault %q (known: all, none, %s)", part, strings.Join(FaultNames(), ", "))
		}
		f |= faultNames[i].f
	}
	return f, nil
}

func (f Faults) String() string {
	switch f {
	case AllFaults:
		return "all"
	case 0:
		return "none"
	}
	var parts []string
	for _, x := range faultNames {
		if f&x.f != 0 {
			parts = append(parts, x.name)
		}
	}
	return strings.Join(parts, ",")
}

// Has reports whether every kind in g is in f.
func (f Faults) Has(g Faults) bool { return f&g == g }
