package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// nginxConf mirrors what the sidecar does per request: HTTP/1.1 keep-alive
// to the upstream, Host preserved, X-Forwarded-* set, no access log. Worker
// count follows the CPU count, as nginx's own "auto" does.
const nginxConf = `daemon off;
master_process on;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    upstream authentik { server %[2]s; keepalive 1024; }
    server {
        listen 127.0.0.1:%[3]d;
        location / {
            proxy_pass http://authentik;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }
    }
}
`

type nginxProc struct {
	cmd    *exec.Cmd
	dir    string
	url    string
	exited chan struct{}
}

func startNginx(ctx context.Context, path, upstreamAddr string) (*nginxProc, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir, err := os.MkdirTemp("", "ssf-bench-nginx-")
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(nginxConf, dir, upstreamAddr, port)), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	n := &nginxProc{cmd: cmd, dir: dir, url: fmt.Sprintf("http://127.0.0.1:%d", port), exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(n.exited) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(n.url + "/ready")
		if err == nil {
			resp.Body.Close()
			return n, nil
		}
		select {
		case <-n.exited:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			os.RemoveAll(dir)
			return nil, fmt.Errorf("nginx exited: %s", firstLine(string(log)))
		default:
		}
		if time.Now().After(deadline) {
			n.stop()
			return nil, fmt.Errorf("nginx did not answer on %s", n.url)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *nginxProc) stop() {
	if n.cmd.Process != nil {
		_ = n.cmd.Process.Signal(os.Interrupt) // SIGINT: fast shutdown of master and workers
		select {
		case <-n.exited:
		case <-time.After(5 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.exited
		}
	}
	os.RemoveAll(n.dir)
}
