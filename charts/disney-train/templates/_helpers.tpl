{{/* Names and labels. */}}
{{- define "disney-train.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "disney-train.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "disney-train.selectorLabels" -}}
app.kubernetes.io/name: {{ include "disney-train.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "disney-train.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "disney-train.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: disney-train
{{- end -}}

{{- define "disney-train.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "disney-train.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the existing ServiceAccount to run as (serviceAccount.create is false)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "disney-train.operatorImage" -}}
{{- $v := .Values.image -}}
{{- if $v.digest -}}
{{- printf "%s@%s" $v.repository $v.digest -}}
{{- else -}}
{{- printf "%s:%s" $v.repository (default .Chart.AppVersion $v.tag) -}}
{{- end -}}
{{- end -}}

{{- define "disney-train.trainerImage" -}}
{{- $v := .Values.jobDefaults.trainerImage -}}
{{- printf "%s:%s" $v.repository (default .Chart.AppVersion $v.tag) -}}
{{- end -}}

{{/* Where the workers' PodMonitor looks: the watched namespaces, or all. */}}
{{- define "disney-train.namespaceSelector" -}}
{{- if .Values.watchNamespaces }}
matchNames:
{{- toYaml .Values.watchNamespaces | nindent 2 }}
{{- else }}
any: true
{{- end }}
{{- end -}}

{{/* The operator's rules on the resources it reconciles (a ClusterRole, or a Role per namespace): exactly
the requests it makes (tests/test_chart_operator.py reads them from a real API server's audit log). */}}
{{- define "disney-train.reconcileRules" -}}
# VideoFineTunes: watched, its finalizer patched, deleted after ttlSecondsAfterFinished
- apiGroups: [disneytrain.dev]
  resources: [videofinetunes]
  verbs: [list, watch, patch, delete]
- apiGroups: [disneytrain.dev]
  resources: [videofinetunes/status]
  verbs: [update]
# its RayJobs' ownerReference blocks the owner's deletion (blockOwnerDeletion): clusters that enforce
# owner references (OwnerReferencesPermissionEnforcement, as OpenShift does) ask for this
- apiGroups: [disneytrain.dev]
  resources: [videofinetunes/finalizers]
  verbs: [update]
# the RayJobs made of them, by server-side apply (which creates the first time: create and patch)
- apiGroups: [ray.io]
  resources: [rayjobs]
  verbs: [list, watch, create, patch, delete]
# each RayJob's run configuration, a ConfigMap of the same name its head mounts (by server-side apply)
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch, delete]
{{- if .Values.networkPolicy.enabled }}
# each RayJob's NetworkPolicy, of the same name (by server-side apply)
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, patch, delete]
{{- end }}
# the S3 keys a VideoFineTune names (spec.s3Credentials, in its own namespace): the operator reads its
# run's progress with them, and holds no keys of its own (get only: never a list of the namespace's Secrets)
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# an elastic run's RayCluster is resized in place
- apiGroups: [ray.io]
  resources: [rayclusters]
  verbs: [patch]
{{- if or .Values.kueue.enabled .Values.kueue.example.enabled }}
# Kueue's Workloads of queued runs (read only: admission and preemption are Kueue's)
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list]
# a waiting run's place in its LocalQueue (Kueue's visibility API)
- apiGroups: [visibility.kueue.x-k8s.io]
  resources: [localqueues/pendingworkloads]
  verbs: [get]
{{- end }}
# Events about VideoFineTunes (best-effort)
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
