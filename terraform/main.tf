# The example's Terraform config: the same service as outpost.toml's [[services]], for
# sites that apply releases with `terraform apply` (outpost.toml: applier = "command",
# docs/apply.md). It needs the kreuzwerker/docker provider, which the development
# machines' provider mirror does not hold yet (docs/releases.md, Terraform).

terraform {
  required_providers {
    docker = {
      source  = "kreuzwerker/docker"
      version = "~> 3.0"
    }
  }
}

variable "registry" {
  description = "The outpost registry (host:port) that the gateway imports images into."
  type        = string
  default     = "127.0.0.1:5000"
}

variable "app_tag" {
  description = "Tag of outpost-demo/app to run."
  type        = string
  default     = "1.0"
}

provider "docker" {}

resource "docker_image" "app" {
  name         = "${var.registry}/outpost-demo/app:${var.app_tag}"
  keep_locally = true
}

resource "docker_container" "app" {
  name         = "outpost-demo-app"
  image        = docker_image.app.image_id
  network_mode = "host"
  command      = ["httpd", "-f", "-p", "8080", "-h", "/www"]
  env          = ["GREETING=hello from Earth"]
  restart      = "unless-stopped"
}
