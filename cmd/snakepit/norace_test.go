//go:build !race

package main

// raceBuild: the tests build the command with the race detector too.
const raceBuild = false
