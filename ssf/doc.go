// Package ssf is the transmitter: streams, subjects, receiver authentication,
// discovery, signing keys and JWKS, the SSF HTTP endpoints, the mapping of tap
// Signals to CAEP and RISC events, and SET building.
package ssf
