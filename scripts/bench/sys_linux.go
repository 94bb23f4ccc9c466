package main

import (
	"fmt"
	"syscall"
)

// sysProcAttr puts a child in its own process group (so it can be stopped
// with everything it started, and a terminal's Ctrl-C reaches only the
// harness, which then stops it) and kills it if the harness dies without
// cleaning up.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// fsInfo names the filesystem holding dir and its free space.
func fsInfo(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "filesystem unknown"
	}
	names := map[int64]string{
		0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs",
		0x794C7630: "overlayfs", 0x6969: "nfs", 0x2FC12FC1: "zfs", 0xF2F52010: "f2fs",
	}
	name, ok := names[int64(st.Type)]
	if !ok {
		name = fmt.Sprintf("filesystem type %#x", st.Type)
	}
	if name == "tmpfs" {
		name += ": in RAM, not on a disk"
	}
	free := float64(st.Bavail) * float64(st.Bsize) / (1 << 30)
	return fmt.Sprintf("%s, %.0f GiB free", name, free)
}
