# The example's Terraform config: the same service as outpost.toml's [[services]] "app",
# for sites that apply releases with Terraform (terraform/README.md). The Outpost terraform
# applier runs it in the release's checkout with TF_VAR_registry, TF_VAR_release and
# TF_VAR_commit set, against the provider the lock file pins, from the outpost's own mirror.

terraform {
  required_providers {
    docker = {
      source  = "kreuzwerker/docker"
      version = "~> 3.0"
    }
  }
}

variable "registry" {
  description = "The outpost registry (host:port) that holds the release's images."
  type        = string
  validation {
    condition     = can(regex("^(https?://)?[A-Za-z0-9.-]+(:[0-9]+)?/?$", var.registry))
    error_message = "The registry is host:port (the outpost's [outpost] registry)."
  }
}

variable "release" {
  description = "The release: the first 12 hex digits of its commit."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{12}$", var.release))
    error_message = "The release is the first 12 hex digits of the commit."
  }
}

variable "commit" {
  description = "The release's full commit."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{40}([0-9a-f]{24})?$", var.commit))
    error_message = "The commit is a full git commit hash."
  }
}

# Unset (null), the provider takes DOCKER_HOST, which the outpost sets from its node.toml's
# [outpost] docker, else unix:///var/run/docker.sock.
variable "docker_host" {
  description = "The Docker daemon the service runs on (default: DOCKER_HOST, else the local one)."
  type        = string
  default     = null
}

locals {
  registry = trimsuffix(replace(var.registry, "/^https?:///", ""), "/") # image names have no scheme
  # As tagged in outpost.toml's [[images]] and [[services]]: change them together.
  app_image = "outpost-demo/app:1.0"
}

provider "docker" {
  host = var.docker_host

  # The outpost registry over TLS, with the outpost's own CA (docs/registry-tls.md). The
  # Docker daemon pulls, so it must trust the CA: /etc/docker/certs.d/<registry>/ca.crt on
  # the outpost. The registry asks for no credentials:
  # registry_auth {
  #   address       = local.registry
  #   auth_disabled = true
  # }
}

# Pulled from the outpost registry, where the release's image bundles put it.
resource "docker_image" "app" {
  name         = "${local.registry}/${local.app_image}"
  keep_locally = true # a rollback starts the previous release's image without a pull
}

resource "docker_container" "app" {
  name         = "outpost-tf-app"
  image        = docker_image.app.image_id
  command      = ["httpd", "-f", "-p", "8080", "-h", "/www"]
  env          = ["GREETING=hello from Earth"]
  network_mode = "host" # listens on the outpost's port 8080
  init         = true
  restart      = "unless-stopped"

  # [services.health]: `terraform apply` fails unless the check passes in time.
  healthcheck {
    test     = ["CMD", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/"]
    interval = "1s"
    retries  = 10
    timeout  = "5s"
  }
  wait         = true
  wait_timeout = 60

  labels {
    label = "org.outpost.release"
    value = var.release
  }
  labels {
    label = "org.outpost.commit"
    value = var.commit
  }
  labels {
    label = "org.outpost.service"
    value = "app"
  }

  # The labels name the release that created the container, as the docker applier's do:
  # a release that changes nothing of the service keeps it running.
  lifecycle {
    ignore_changes = [labels]
  }
}

output "container" {
  description = "The service's container and the image it runs."
  value = {
    name  = docker_container.app.name
    image = docker_image.app.name
  }
}
