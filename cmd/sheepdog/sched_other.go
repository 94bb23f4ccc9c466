//go:build !linux

package main

// batchScheduling is Linux only; elsewhere threads keep their policy.
func batchScheduling() error { return nil }
