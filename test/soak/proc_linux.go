package main

import "syscall"

// sysProcAttr makes a child process die with the soak, so no process
// outlives an interrupted run.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
