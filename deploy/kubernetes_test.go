package deploy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
	"go.yaml.in/yaml/v3"

	"github.com/walship/walship/storage/location"
)

// The subset of the Kubernetes API the manifests use, decoded strictly.

type k8sMeta struct {
	Name        string
	Labels      map[string]string
	Annotations map[string]string
}

type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string
	Metadata   k8sMeta
	// ConfigMap, Secret, ServiceAccount
	Data                         map[string]string
	StringData                   map[string]string `yaml:"stringData"`
	Type                         string
	AutomountServiceAccountToken *bool `yaml:"automountServiceAccountToken"`
	Spec                         *k8sSpec
}

// k8sSpec holds the fields of the specs of every kind used: PVC,
// Deployment, CronJob, Job. A field of another kind than the object's is
// refused by checkKinds.
type k8sSpec struct {
	// PersistentVolumeClaim
	AccessModes []string `yaml:"accessModes"`
	Resources   *struct {
		Requests map[string]string
	}
	// Deployment
	Replicas *int
	Strategy *struct{ Type string }
	Selector *struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	}
	// CronJob
	Schedule                   string
	TimeZone                   string                  `yaml:"timeZone"`
	ConcurrencyPolicy          string                  `yaml:"concurrencyPolicy"`
	StartingDeadlineSeconds    int                     `yaml:"startingDeadlineSeconds"`
	SuccessfulJobsHistoryLimit int                     `yaml:"successfulJobsHistoryLimit"`
	FailedJobsHistoryLimit     int                     `yaml:"failedJobsHistoryLimit"`
	JobTemplate                *struct{ Spec JobSpec } `yaml:"jobTemplate"`
	// Job (inline), Deployment (Template)
	JobSpec `yaml:",inline"`
}

type JobSpec struct {
	BackoffLimit            *int `yaml:"backoffLimit"`
	ActiveDeadlineSeconds   int  `yaml:"activeDeadlineSeconds"`
	TTLSecondsAfterFinished int  `yaml:"ttlSecondsAfterFinished"`
	PodFailurePolicy        *struct {
		Rules []struct {
			Action      string
			OnExitCodes struct {
				ContainerName string `yaml:"containerName"`
				Operator      string
				Values        []int
			} `yaml:"onExitCodes"`
		}
	} `yaml:"podFailurePolicy"`
	Template *podTemplate
}

type podTemplate struct {
	Metadata k8sMeta
	Spec     podSpec
}

type podSpec struct {
	ServiceAccountName            string `yaml:"serviceAccountName"`
	RestartPolicy                 string `yaml:"restartPolicy"`
	TerminationGracePeriodSeconds *int   `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot   *bool                 `yaml:"runAsNonRoot"`
		RunAsUser      *int64                `yaml:"runAsUser"`
		RunAsGroup     *int64                `yaml:"runAsGroup"`
		FSGroup        *int64                `yaml:"fsGroup"`
		SeccompProfile struct{ Type string } `yaml:"seccompProfile"`
	} `yaml:"securityContext"`
	Containers []container
	Volumes    []volume
}

type keyRef struct {
	Name, Key string
	Optional  bool
}

type container struct {
	Name    string
	Image   string
	Command []string
	Args    []string
	Env     []struct {
		Name      string
		Value     string
		ValueFrom *struct {
			ConfigMapKeyRef *keyRef `yaml:"configMapKeyRef"`
			SecretKeyRef    *keyRef `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	}
	EnvFrom []struct {
		ConfigMapRef *keyRef `yaml:"configMapRef"`
		SecretRef    *keyRef `yaml:"secretRef"`
	} `yaml:"envFrom"`
	Lifecycle *struct {
		PreStop *struct {
			Sleep *struct{ Seconds int }
		} `yaml:"preStop"`
	}
	Ports          []containerPort
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Resources      struct {
		Requests map[string]string
		Limits   map[string]string
	}
	SecurityContext struct {
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		Capabilities             struct{ Drop []string }
	} `yaml:"securityContext"`
	VolumeMounts []volumeMount `yaml:"volumeMounts"`
}

type containerPort struct {
	Name          string
	ContainerPort int `yaml:"containerPort"`
}

type probe struct {
	HTTPGet *struct {
		Path string
		Port any // a number or a port's name
	} `yaml:"httpGet"`
	PeriodSeconds    int `yaml:"periodSeconds"`
	FailureThreshold int `yaml:"failureThreshold"`
}

type volumeMount struct {
	Name      string
	MountPath string `yaml:"mountPath"`
}

type volume struct {
	Name                  string
	PersistentVolumeClaim *struct {
		ClaimName string `yaml:"claimName"`
	} `yaml:"persistentVolumeClaim"`
	EmptyDir *struct {
		Medium    string
		SizeLimit string `yaml:"sizeLimit"`
	} `yaml:"emptyDir"`
}

type kustomization struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string
	Labels     []struct{ Pairs map[string]string }
	Resources  []string
	Images     []struct {
		Name    string
		NewTag  string `yaml:"newTag"`
		NewName string `yaml:"newName"`
	}
}

var apiVersions = map[string]string{
	"ConfigMap": "v1", "Secret": "v1", "ServiceAccount": "v1", "PersistentVolumeClaim": "v1",
	"Deployment": "apps/v1", "CronJob": "batch/v1", "Job": "batch/v1",
}

func readManifests(t *testing.T, dir string) (map[string][]k8sObject, kustomization) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	objs := map[string][]k8sObject{}
	var kust kustomization
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		base := filepath.Base(f)
		if base == "kustomization.yaml" {
			if err := strictYAML(mustYAML(t, b), &kust); err != nil {
				t.Fatalf("%s: %v", base, err)
			}
			continue
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		for {
			var v any
			if err := dec.Decode(&v); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", base, err)
			}
			var o k8sObject
			if err := strictYAML(v, &o); err != nil {
				t.Fatalf("%s: %v", base, err)
			}
			if want, ok := apiVersions[o.Kind]; !ok || o.APIVersion != want || o.Metadata.Name == "" {
				t.Errorf("%s: %s %s %q: want a known kind with its apiVersion and a name", base, o.APIVersion, o.Kind, o.Metadata.Name)
			}
			objs[base] = append(objs[base], o)
		}
	}
	return objs, kust
}

func mustYAML(t *testing.T, b []byte) any {
	var v any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestKubernetes(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "deploy", "kubernetes")
	files, kust := readManifests(t, dir)
	byKind := map[string]map[string]k8sObject{}
	for _, objs := range files {
		for _, o := range objs {
			if byKind[o.Kind] == nil {
				byKind[o.Kind] = map[string]k8sObject{}
			}
			if _, dup := byKind[o.Kind][o.Metadata.Name]; dup {
				t.Errorf("two %s named %s", o.Kind, o.Metadata.Name)
			}
			byKind[o.Kind][o.Metadata.Name] = o
		}
	}
	for _, r := range kust.Resources {
		if _, ok := files[r]; !ok {
			t.Errorf("kustomization.yaml lists %s, which is not a manifest here", r)
		}
	}
	for f, objs := range files {
		if !slices.Contains(kust.Resources, f) && !slices.ContainsFunc(objs, func(o k8sObject) bool { return o.Kind == "Job" }) {
			t.Errorf("%s is neither in kustomization.yaml nor an on-demand Job", f)
		}
	}
	archivers := 0
	for f, objs := range files {
		for _, o := range objs {
			where := fmt.Sprintf("%s: %s %s", f, o.Kind, o.Metadata.Name)
			var pod *podTemplate
			switch o.Kind {
			case "Deployment":
				pod = o.Spec.Template
			case "CronJob":
				if _, err := cron.ParseStandard(o.Spec.Schedule); err != nil {
					t.Errorf("%s: schedule %q: %v", where, o.Spec.Schedule, err)
				}
				if o.Spec.ConcurrencyPolicy != "Forbid" {
					t.Errorf("%s: concurrencyPolicy %q: runs must not overlap (they share a lease)", where, o.Spec.ConcurrencyPolicy)
				}
				if _, err := time.LoadLocation(o.Spec.TimeZone); err != nil || o.Spec.TimeZone == "" {
					t.Errorf("%s: timeZone %q: %v", where, o.Spec.TimeZone, err)
				}
				checkJob(t, where, o.Spec.JobTemplate.Spec)
				pod = o.Spec.JobTemplate.Spec.Template
			case "Job":
				checkJob(t, where, o.Spec.JobSpec)
				pod = o.Spec.Template
			case "ServiceAccount":
				if _, err := roleOf(o); err != nil {
					t.Errorf("%s: %v", where, err)
				}
			}
			if pod == nil {
				continue
			}
			inv, ok := checkPod(t, where, pod.Spec, byKind)
			if ok {
				checkMonitoring(t, where, pod, inv)
			}
			if ok && inv.command == "archive" {
				archivers++
				checkArchiverDeployment(t, where, o, inv)
			}
		}
	}
	if archivers != 1 {
		t.Errorf("%d archivers, want 1 (they share the lease)", archivers)
	}
}

// roleOf is the IAM role a service account's IRSA annotation binds.
func roleOf(sa k8sObject) (string, error) {
	arn := sa.Metadata.Annotations["eks.amazonaws.com/role-arn"]
	m := regexp.MustCompile(`^arn:aws:iam::\d{12}:role/([\w+=,.@-]+)$`).FindStringSubmatch(arn)
	if m == nil {
		return "", fmt.Errorf("role ARN %q", arn)
	}
	return m[1], nil
}

func checkJob(t *testing.T, where string, j JobSpec) {
	t.Helper()
	if j.Template == nil || j.BackoffLimit == nil {
		t.Errorf("%s: a Job needs a template and a backoffLimit", where)
		return
	}
	if j.Template.Spec.RestartPolicy != "Never" {
		t.Errorf("%s: restartPolicy %q: walship's exit code must reach the Job (Never)", where, j.Template.Spec.RestartPolicy)
	}
	if j.PodFailurePolicy != nil {
		for _, r := range j.PodFailurePolicy.Rules {
			if !slices.ContainsFunc(j.Template.Spec.Containers, func(c container) bool { return c.Name == r.OnExitCodes.ContainerName }) {
				t.Errorf("%s: podFailurePolicy names container %q", where, r.OnExitCodes.ContainerName)
			}
			for _, v := range r.OnExitCodes.Values {
				if !slices.Contains([]int{1, 2, 75}, v) {
					t.Errorf("%s: podFailurePolicy on exit %d, which walship does not use", where, v)
				}
			}
		}
	}
}

// checkPod checks a pod running walship: hardening, resources, the image
// variant, the command, its environment, volumes and service account.
func checkPod(t *testing.T, where string, p podSpec, objs map[string]map[string]k8sObject) (invocation, bool) {
	t.Helper()
	sc := p.SecurityContext
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 || sc.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("%s: want runAsNonRoot, a non-zero runAsUser and the RuntimeDefault seccomp profile", where)
	}
	if len(p.Containers) != 1 {
		t.Errorf("%s: %d containers, want walship alone", where, len(p.Containers))
		return invocation{}, false
	}
	c := p.Containers[0]
	csc := c.SecurityContext
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem || !slices.Equal(csc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("%s: want allowPrivilegeEscalation false, readOnlyRootFilesystem, capabilities drop ALL", where)
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
		t.Errorf("%s: want cpu and memory requests and a memory limit", where)
	}
	variant, pgMajor, err := ourImage(c.Image)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return invocation{}, false
	}
	argv := c.Args
	switch {
	case variant == "restore" && !slices.Equal(c.Command, []string{walshipPath}):
		t.Errorf("%s: the restore image's entrypoint is PostgreSQL's; set command [%s]", where, walshipPath)
	case len(c.Command) > 0 && !slices.Equal(c.Command, []string{walshipPath}):
		t.Errorf("%s: command %q: walship is %s", where, c.Command, walshipPath)
	}
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		if r := ef.ConfigMapRef; r != nil {
			maps(t, where, env, objs["ConfigMap"], r, func(o k8sObject) map[string]string { return o.Data })
		}
		if r := ef.SecretRef; r != nil {
			maps(t, where, env, objs["Secret"], r, func(o k8sObject) map[string]string { return o.StringData })
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.ConfigMapKeyRef != nil:
			env[e.Name] = lookup(t, where, objs["ConfigMap"], e.ValueFrom.ConfigMapKeyRef, func(o k8sObject) map[string]string { return o.Data })
		case e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = lookup(t, where, objs["Secret"], e.ValueFrom.SecretKeyRef, func(o k8sObject) map[string]string { return o.StringData })
		}
	}
	inv, ok := checkRun(t, where, argv, env)
	if !ok {
		return inv, false
	}
	checkPGBin(t, where, inv, variant, pgMajor)
	if variant == "restore" && *sc.RunAsUser != 999 {
		t.Errorf("%s: the restore image's postgres user is 999; it must own the data directory", where)
	}
	// The root file system is read-only: what walship writes must be on a volume.
	mounted := func(path string) bool {
		return slices.ContainsFunc(c.VolumeMounts, func(m volumeMount) bool {
			return path == m.MountPath || strings.HasPrefix(path, m.MountPath+"/")
		})
	}
	if d := inv.values["target-dir"]; d != "" && !mounted(d) {
		t.Errorf("%s: --target-dir %s is on the read-only root file system", where, d)
	}
	if inv.values["start"] == "true" && !mounted("/tmp") {
		t.Errorf("%s: restore --start needs a writable /tmp", where)
	}
	for _, m := range c.VolumeMounts {
		if !slices.ContainsFunc(p.Volumes, func(v volume) bool {
			return v.Name == m.Name && (v.EmptyDir != nil || v.PersistentVolumeClaim != nil && objs["PersistentVolumeClaim"][v.PersistentVolumeClaim.ClaimName].Kind != "")
		}) {
			t.Errorf("%s: volume %s is not declared, or its claim does not exist", where, m.Name)
		}
	}
	// walship's soft memory limit must fit under the container's.
	limit, err1 := quantity(c.Resources.Limits["memory"])
	soft, err2 := quantity(strings.TrimSuffix(memoryLimit(t, inv, env), "B"))
	if err1 != nil || err2 != nil || soft >= limit {
		t.Errorf("%s: memory limit %s must exceed walship's --memory-limit %s (%v, %v)", where, c.Resources.Limits["memory"], memoryLimit(t, inv, env), err1, err2)
	}
	// The service account is bound to the role this command needs, and no more.
	sa, ok := objs["ServiceAccount"][p.ServiceAccountName]
	if !ok {
		t.Errorf("%s: service account %q does not exist", where, p.ServiceAccountName)
	} else if role, err := roleOf(sa); err != nil || role != roleFor(inv.command) {
		t.Errorf("%s: walship %s runs as %s (role %s), want role %s", where, inv.command, p.ServiceAccountName, role, roleFor(inv.command))
	}
	if repo := inv.values["repo"] + env["WALSHIP_REPO"]; repo != "" {
		if loc, err := location.Parse(repo); err == nil && loc.Scheme == "s3" {
			checkRepoMatchesIAM(t, where, loc)
		}
	}
	return inv, true
}

func maps(t *testing.T, where string, env map[string]string, objs map[string]k8sObject, r *keyRef, data func(k8sObject) map[string]string) {
	o, ok := objs[r.Name]
	if !ok {
		if !r.Optional {
			t.Errorf("%s: envFrom %s does not exist", where, r.Name)
		}
		return
	}
	for k, v := range data(o) {
		env[k] = v
	}
}

func lookup(t *testing.T, where string, objs map[string]k8sObject, r *keyRef, data func(k8sObject) map[string]string) string {
	v, ok := data(objs[r.Name])[r.Key]
	if !ok && !r.Optional {
		t.Errorf("%s: %s has no key %s", where, r.Name, r.Key)
	}
	return v
}

func memoryLimit(t *testing.T, inv invocation, env map[string]string) string {
	if v := inv.values["memory-limit"]; v != "" {
		return v
	}
	if v := env["WALSHIP_MEMORY_LIMIT"]; v != "" {
		return v
	}
	if fi, ok := walshipCLI(t).commands[inv.command].flags["memory-limit"]; ok {
		return fi.def
	}
	return "0Mi"
}

// quantity reads a memory size: Kubernetes' 192Mi, 1Gi, or walship's 64MiB.
func quantity(s string) (int64, error) {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"M", 1e6}, {"G", 1e9}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return v * u.mult, err
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// ourImage says which of walship's images ref is: "walship" (minimal) or
// "restore" with its PostgreSQL major version.
func ourImage(ref string) (variant, pgMajor string, err error) {
	m := regexp.MustCompile(`^(ghcr\.io/walship/walship|\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/walship):(\d+\.\d+\.\d+)(-pg(1[4-8]))?$`).FindStringSubmatch(ref)
	if m == nil {
		return "", "", fmt.Errorf("image %q is not one deploy/Dockerfile builds (ghcr.io/walship/walship:X.Y.Z, or -pgNN for the restore image with PostgreSQL 14-18)", ref)
	}
	if m[4] != "" {
		return "restore", m[4], nil
	}
	return "walship", "", nil
}

// checkArchiverDeployment checks what keeps one archiver running and lets
// it stop cleanly.
func checkArchiverDeployment(t *testing.T, where string, o k8sObject, inv invocation) {
	t.Helper()
	if o.Kind != "Deployment" || o.Spec.Replicas == nil || *o.Spec.Replicas != 1 || o.Spec.Strategy == nil || o.Spec.Strategy.Type != "Recreate" {
		t.Errorf("%s: the archiver is a Deployment of 1 replica with the Recreate strategy (one lease holder)", where)
		return
	}
	if inv.values["wait"] != "true" {
		t.Errorf("%s: without --wait a new pod exits 75 until a killed pod's lease expires", where)
	}
	p := o.Spec.Template.Spec
	pre := 0
	if l := p.Containers[0].Lifecycle; l != nil && l.PreStop != nil && l.PreStop.Sleep != nil {
		pre = l.PreStop.Sleep.Seconds
	} else {
		t.Errorf("%s: no preStop hook", where)
	}
	if inv.values["metrics-addr"] == "" {
		t.Errorf("%s: the archiver serves no --metrics-addr (metrics, probes)", where)
	}
	stop := walshipCLI(t).duration(t, inv, "stop-timeout")
	if p.TerminationGracePeriodSeconds == nil || time.Duration(*p.TerminationGracePeriodSeconds)*time.Second <= time.Duration(pre)*time.Second+stop {
		t.Errorf("%s: terminationGracePeriodSeconds must exceed preStop (%ds) plus --stop-timeout (%s)", where, pre, stop)
	}
}

// checkMonitoring checks that probes, ports and the scrape annotations of a
// pod match walship's --metrics-addr: the port it listens on, on every
// interface, and the paths it serves.
func checkMonitoring(t *testing.T, where string, pod *podTemplate, inv invocation) {
	t.Helper()
	c := pod.Spec.Containers[0]
	ann := pod.Metadata.Annotations
	addr := inv.values["metrics-addr"]
	if addr == "" {
		if c.ReadinessProbe != nil || c.LivenessProbe != nil || len(c.Ports) > 0 || ann["prometheus.io/scrape"] != "" {
			t.Errorf("%s: probes, ports or scrape annotations without --metrics-addr", where)
		}
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || (host != "" && host != "0.0.0.0" && host != "::") {
		t.Errorf("%s: --metrics-addr %q: want :PORT, so that the kubelet and Prometheus reach it (%v)", where, addr, err)
		return
	}
	n, err := strconv.Atoi(port)
	if err != nil || !slices.ContainsFunc(c.Ports, func(p containerPort) bool { return p.ContainerPort == n }) {
		t.Errorf("%s: the container declares no port %s for --metrics-addr", where, port)
	}
	probePort := func(v any) int {
		switch v := v.(type) {
		case int:
			return v
		case string:
			for _, p := range c.Ports {
				if p.Name == v {
					return p.ContainerPort
				}
			}
		}
		return -1
	}
	for _, pr := range []struct {
		name, path string
		p          *probe
	}{{"readinessProbe", "/readyz", c.ReadinessProbe}, {"livenessProbe", "/healthz", c.LivenessProbe}} {
		if pr.p == nil || pr.p.HTTPGet == nil {
			t.Errorf("%s: no %s (GET %s)", where, pr.name, pr.path)
			continue
		}
		if pr.p.HTTPGet.Path != pr.path || probePort(pr.p.HTTPGet.Port) != n {
			t.Errorf("%s: %s GETs %s on port %v; walship serves %s on %d", where, pr.name, pr.p.HTTPGet.Path, pr.p.HTTPGet.Port, pr.path, n)
		}
	}
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != port || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("%s: scrape annotations %v; want prometheus.io/scrape \"true\", port %s, path /metrics", where, ann, port)
	}
}
