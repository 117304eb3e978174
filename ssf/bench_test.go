package ssf

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// BenchmarkPublish measures building SETs for one signal across streams.
func BenchmarkPublish(b *testing.B) {
	for _, n := range []int{1, 25} {
		b.Run(fmt.Sprintf("streams=%d", n), func(b *testing.B) {
			tr, q := unitTransmitter(b, func(c *Config) { c.MaxStreamsPerReceiver = 100 })
			for i := range n {
				unitCreate(b, tr, q, acmeTok, fmt.Sprintf(`{"description":"stream %d"}`, i))
			}
			s := tap.Signal{ID: "s", Kind: tap.KindPasswordChanged, Subject: alice, Actor: &alice}
			b.ReportAllocs()
			for b.Loop() {
				if err := tr.Publish(context.Background(), s); err != nil {
					b.Fatal(err)
				}
				q.take()
			}
		})
	}
}

// BenchmarkSign compares RS256 (RSA-2048) with ES256 (P-256) signing of a
// typical SET.
func BenchmarkSign(b *testing.B) {
	claims := []byte(`{"iss":"https://tr.example/ssf","aud":"acme","iat":1700000000,"jti":"abc","sub_id":{"format":"email","email":"a@b.example"},"events":{"https://schemas.openid.net/secevent/caep/event-type/session-revoked":{"event_timestamp":1700000000}}}`)
	rsaKeys := testKeys(b)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(ec)
	sk, err := parsePrivateKeyPEM(pemBytes("EC PRIVATE KEY", der))
	if err != nil {
		b.Fatal(err)
	}
	ecKeys := &Keys{keys: []*signingKey{sk}, cfg: KeyConfig{Clock: time.Now}}
	// stamp is the part of Sign that sets iat to the signing time.
	b.Run("stamp-iat", func(b *testing.B) {
		for b.Loop() {
			if _, err := stampIat(claims, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
	for name, k := range map[string]*Keys{"RS256": rsaKeys, "ES256": ecKeys} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := k.Sign(context.Background(), claims); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
