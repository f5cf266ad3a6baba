# Local tool chain and a local real Kubernetes control plane (no Docker needed).
# Included by the top-level Makefile:  include hack/tools.mk
PENSTOCK_HACK_DIR := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: tools cluster-up cluster-down cluster-status

tools: ## Build pinned kube-apiserver/controller-manager/scheduler, kubectl, etcd, kwok, helm, prometheus into bin/ (cached in ~/.cache/penstock-tools)
	@bash $(PENSTOCK_HACK_DIR)/tools.sh

cluster-up: tools ## Start a local control plane (etcd, apiserver, controller-manager, scheduler, kwok + 3 fake nodes); KUBECONFIG=.cluster/kubeconfig
	@bash $(PENSTOCK_HACK_DIR)/cluster.sh up

cluster-down: ## Stop the local control plane and delete its state (.cluster/, logs kept)
	@bash $(PENSTOCK_HACK_DIR)/cluster.sh down

cluster-status: ## Show the local control plane's components, ports and nodes
	@bash $(PENSTOCK_HACK_DIR)/cluster.sh status
