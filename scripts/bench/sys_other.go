//go:build !linux

package main

import "syscall"

// sysProcAttr puts a child in its own process group (so it can be stopped
// with everything it started, and a terminal's Ctrl-C reaches only the
// harness, which then stops it).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// fsInfo names the filesystem holding dir (only known on Linux).
func fsInfo(dir string) string { return "filesystem unknown" }
